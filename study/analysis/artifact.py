"""The metric-artifact check (Schaeffer et al. 2023, arXiv:2304.15004).

A thresholded metric (``flip_rate``, ``adoption``) turns a smooth shift of a continuous score
into a sigmoid: if every probe's margin moves a little further with each doubling of n_eff, the
fraction of probes that cross zero still rises like a step, because the probes sit in a narrow
band below zero. Such a step is a *crossover*, not a transition. A transition shows in the
margins themselves: probes *switch* - at an intermediate n_eff some have jumped and some have not,
so the per-probe margin distribution is bimodal there.

This module reads trials through the data contract (:mod:`study.analysis.data`) and

- groups them into n_eff levels and describes each level's per-probe margins
  (:func:`margin_levels`), with Hartigan's dip test of unimodality (the ``diptest`` package);
- predicts the flip rate a smoothly shifting margin distribution would give
  (:func:`smooth_flip_rate`) and compares it with the observed one, trial by trial;
- decides whether a sharp-looking flip rate is a metric artifact (:func:`check_metric_artifact`);
- draws the margin distributions and the flip rates (:func:`ridge_figure`, :func:`flip_figure`).

Every returned dict holds only JSON-ready values (lists of floats, numbers, strings, bools,
``None`` where a number cannot be computed), so it can go into ``summary.json`` as is.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from typing import Any

import numpy as np
from scipy import optimize, stats

from study.analysis.data import StudyData, Trial

ALPHA = 0.05  # dip-test level: p < ALPHA rejects unimodality
FLIP_TOLERANCE = 0.1  # mean |observed - predicted| flip rate a smooth shift may miss by
SHARP_DELTA_AIC = 10.0  # a sigmoid shift must beat every smooth curve by this much AIC to count
MIN_TRIALS_FOR_SHAPE = 6  # the sigmoid has 5 parameters with its sigma: fewer trials cannot judge
MIN_LEVELS = 3  # a shape over n_eff needs at least three levels
JITTER_SEED = 20230415  # fixed, so the dip test of tied data is reproducible


# ----------------------------------------------------------------------------------------------
# Hartigan's dip test
# ----------------------------------------------------------------------------------------------

def dip_test(x: np.ndarray, seed: int = JITTER_SEED) -> tuple[float | None, float | None]:
    """Hartigan's dip statistic and its p-value (``diptest.diptest``, p from the tabulated
    null) for the sample ``x``; ``(None, None)`` for fewer than 4 values, where no dip test is
    possible (the dip of n <= 3 points is always 1/(2n)).

    The dip test assumes a continuous distribution; exact ties (margins that did not move, a
    probe scored identically in two trials, rounded values) are broken first by a seeded jitter
    of 1e-9 of the sample's range (or 1e-9 if all values are equal), far below any margin
    difference that matters, so the result is reproducible."""
    import diptest

    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 4:
        return None, None
    if np.unique(x).size < x.size:
        scale = 1e-9 * (float(np.ptp(x)) or 1.0)
        x = x + np.random.default_rng(seed).uniform(-scale, scale, x.size)
    dip, pval = diptest.diptest(x)
    return float(dip), float(pval)


# ----------------------------------------------------------------------------------------------
# Levels
# ----------------------------------------------------------------------------------------------

def _group_log_n(values: np.ndarray, levels: int) -> list[list[float]]:
    """Split the sorted distinct n_eff ``values`` into ``levels`` contiguous groups: log-spaced
    bins over [min, max], empty bins dropped, and - while fewer than ``levels`` groups remain -
    the group with the widest gap between neighbouring values split at that gap. Gives exactly
    ``min(levels, len(values))`` non-empty groups."""
    if values.size <= levels:
        return [[float(v)] for v in values]
    logs = np.log(values)
    edges = np.linspace(logs[0], logs[-1], levels + 1)
    index = np.clip(np.searchsorted(edges, logs, side="right") - 1, 0, levels - 1)
    groups = [list(values[index == i]) for i in range(levels) if np.any(index == i)]
    while len(groups) < levels:
        # the widest log-gap inside any group; a group of one value has none
        best, at, width = -1, -1, -1.0
        for g, group in enumerate(groups):
            if len(group) > 1:
                gaps = np.diff(np.log(group))
                if gaps.max() > width:
                    best, at, width = g, int(gaps.argmax()), float(gaps.max())
        group = groups.pop(best)
        groups[best:best] = [group[: at + 1], group[at + 1:]]
    return [[float(v) for v in group] for group in groups]


def level_dip(rows: np.ndarray) -> dict:
    """The dip test of a level: one test per trial (a row of ``rows``, one value per probe),
    combined over the level's trials by Fisher's method (``scipy.stats.combine_pvalues``).

    Why per trial: the unit is the probe. Pooling a level's trials would count every probe
    once per trial, and a chance gap among a few dozen base margins, repeated four times,
    becomes a "significant" second mode; within one trial the probes are separate draws.
    Fisher's method keeps the power of several trials without that pseudo-replication (the
    dip's tabulated p-values are conservative, which keeps the combination conservative).
    Returns ``{"dip": median per-trial dip, "p": combined p, "trial_p": [...]}`` (``None``
    where no trial has 4 or more probes)."""
    tests = [dip_test(row, seed=JITTER_SEED + i) for i, row in enumerate(rows)]
    tests = [(d, p) for d, p in tests if p is not None]
    if not tests:
        return {"dip": None, "p": None, "trial_p": []}
    ps = [p for _, p in tests]
    # a p of 0 (beyond the dip table) would be log(0) in Fisher's sum; 1e-300 is as decisive
    floored = [max(p, 1e-300) for p in ps]
    combined = ps[0] if len(ps) == 1 else float(stats.combine_pvalues(floored, method="fisher").pvalue)
    return {"dip": float(np.median([d for d, _ in tests])), "p": float(min(max(combined, 0.0), 1.0)),
            "trial_p": ps}


def _sd(x: np.ndarray) -> float | None:
    return float(np.std(x, ddof=1)) if x.size > 1 else None


def _flips(base: np.ndarray, tuned: np.ndarray) -> tuple[int, int]:
    """(flipped, eligible): probes with base margin <= 0, and those of them now > 0."""
    eligible = base <= 0
    return int((tuned[eligible] > 0).sum()), int(eligible.sum())


def margin_levels(data: StudyData, trials: list[Trial] | None = None, levels: int = 5) -> list[dict]:
    """Group ``trials`` (default: all of ``data.trials``) into ``levels`` n_eff levels and
    describe each level's per-probe margins.

    Levels are log-spaced bins of n_eff, each holding at least one trial; when log-spaced bins
    leave some empty, the level with the widest gap in ln n_eff is split at that gap, so there
    are exactly ``levels`` levels whenever there are that many distinct n_eff values. With fewer
    distinct values each value is its own level and every level's ``note`` says so.

    Pass trials of one learning-rate band and one dream strategy: a level's distribution (the
    figure), flip rate and scatter pool all its trials, and trials at different learning rates
    move by different amounts for reasons that are not n_eff. ``lrs`` lists what was pooled.

    Each level is a dict:

    - ``level`` (0-based), ``n_eff_min``, ``n_eff_max``, ``n_eff_center`` (geometric mean over
      its trials), ``trial_numbers``, ``n_trials``, ``lrs``, ``note``;
    - ``base_margins``: the base margin of each probe (the same list at every level; the
      reference distribution);
    - ``tuned_margins`` and ``deltas`` (tuned - base): pooled over the level's trials, probe by
      probe (``n_trials x n_probes`` values), with ``tuned_mean``/``tuned_sd`` and
      ``delta_mean``/``delta_sd``;
    - ``trial_shifts``: each trial's mean delta (its ``shift`` from the margins);
    - ``spread``: the sd of each probe's delta around its own trial's mean delta, pooled over
      the level - the probe-to-probe scatter a smooth shift carries (``None`` with one probe);
    - ``dip``, ``dip_p``, ``trial_dip_p``: Hartigan's dip test of the tuned margins, run on each
      trial's probes and combined over the level by Fisher's method (:func:`level_dip`): the
      median dip, the combined p-value, and each trial's p. Per trial also means trials a
      doubling apart, pooled in one level, cannot show two modes merely because they moved by
      different amounts;
    - ``delta_dip``, ``delta_dip_p``: the same test of the deltas around their trial's mean (the
      same residuals as ``spread``): bimodal when some probes moved much more than others,
      whatever the shape of the base margins;
    - ``flips``, ``eligible``, ``flip_rate``: among probes with base margin <= 0, summed over the
      level's trials, those with tuned margin > 0 (``flip_rate`` is ``None`` when no probe
      starts at or below zero).
    """
    trials = list(data.trials if trials is None else trials)
    if not trials:
        return []
    base = np.asarray(data.base_margins, dtype=float)
    distinct = np.unique(np.array([t.n_eff for t in trials], dtype=float))
    if np.any(distinct <= 0):
        raise ValueError("margin_levels: every trial needs n_eff > 0 (levels are log-spaced)")
    groups = _group_log_n(distinct, levels)
    note = "" if len(groups) >= levels else (
        f"only {len(groups)} distinct n_eff values, so {len(groups)} levels instead of {levels}")
    out = []
    for i, group in enumerate(groups):
        members = sorted((t for t in trials if group[0] <= t.n_eff <= group[-1]),
                         key=lambda t: (t.n_eff, t.number))
        tuned = np.stack([t.margins for t in members])  # trials x probes
        deltas = tuned - base
        shifts = deltas.mean(axis=1)
        residuals = deltas - shifts[:, None]
        tuned_dip, delta_dip = level_dip(tuned), level_dip(residuals)
        flips = [_flips(base, row) for row in tuned]
        flipped, eligible = sum(f for f, _ in flips), sum(e for _, e in flips)
        n_eff = np.array([t.n_eff for t in members], dtype=float)
        out.append({
            "level": i, "n_eff_min": int(group[0]), "n_eff_max": int(group[-1]),
            "n_eff_center": float(np.exp(np.log(n_eff).mean())),
            "trial_numbers": [t.number for t in members], "n_trials": len(members),
            "lrs": sorted({float(t.lr) for t in members}), "note": note,
            "base_margins": [float(b) for b in base],
            "tuned_margins": [float(m) for m in tuned.ravel()],
            "deltas": [float(d) for d in deltas.ravel()],
            "trial_shifts": [float(s) for s in shifts],
            "tuned_mean": float(tuned.mean()), "tuned_sd": _sd(tuned.ravel()),
            "delta_mean": float(deltas.mean()), "delta_sd": _sd(deltas.ravel()),
            "spread": (float(np.sqrt((residuals ** 2).sum() / (residuals.size - len(members))))
                       if base.size > 1 else None),
            "dip": tuned_dip["dip"], "dip_p": tuned_dip["p"], "trial_dip_p": tuned_dip["trial_p"],
            "delta_dip": delta_dip["dip"], "delta_dip_p": delta_dip["p"],
            "flips": flipped, "eligible": eligible,
            "flip_rate": flipped / eligible if eligible else None,
        })
    return out


# ----------------------------------------------------------------------------------------------
# The smooth-shift prediction
# ----------------------------------------------------------------------------------------------

def smooth_flip_rate(base_margins: np.ndarray, shift: float, spread: float = 0.0) -> float:
    """The flip rate a smoothly shifting margin distribution gives: every probe's base margin
    ``b`` moved by the same ``shift``, plus a Gaussian probe-to-probe scatter of sd ``spread``;
    the expected fraction of the probes with ``b <= 0`` that end above zero,
    ``mean over b <= 0 of Phi((b + shift) / spread)`` (a step ``b + shift > 0`` when
    ``spread`` is 0). NaN when no probe starts at or below zero.

    Why the scatter: real probes never move by exactly the mean shift. With no scatter the
    prediction is a staircase that stays at 0 until the shift reaches the highest eligible base
    margin, and any probe nudged over zero by ordinary scatter would count as an excess flip -
    so a smooth shift would be called a transition. The check passes the scatter it *observes*
    (``spread`` of :func:`margin_levels`, the sd of the deltas around their trial's mean), so
    nothing is fitted to the flip rate it is compared with. Where probes really switch, that
    scatter is inflated and the prediction generous; the dip test, not this prediction, is what
    catches switching."""
    base = np.asarray(base_margins, dtype=float)
    eligible = base[base <= 0]
    if eligible.size == 0:
        return float("nan")
    moved = eligible + float(shift)
    if not spread or spread <= 0:
        return float((moved > 0).mean())
    return float(stats.norm.cdf(moved / float(spread)).mean())


# ----------------------------------------------------------------------------------------------
# Is the shift itself smooth?
# ----------------------------------------------------------------------------------------------

def _gauss_aic(rss: float, n: int, k: int) -> float:
    """AIC of a least-squares fit with a Gaussian likelihood, sigma at its MLE (counted in k)."""
    sigma2 = max(rss / n, 1e-300)
    loglik = -0.5 * n * (math.log(2 * math.pi * sigma2) + 1.0)
    return 2 * k - 2 * loglik


def _ols_rss(design: np.ndarray, y: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(((y - design @ coef) ** 2).sum())


def _rss_power(c: float, n: np.ndarray, y: np.ndarray) -> float:
    # y = a + b * n^c; c -> 0 is the linear-in-log limit, so c is kept away from 0
    c = c if abs(c) > 1e-3 else 1e-3
    return _ols_rss(np.column_stack([np.ones_like(n), n ** c]), y)


def _rss_sigmoid(params: np.ndarray, u: np.ndarray, y: np.ndarray) -> float:
    # y = lo + (hi - lo) * sigmoid((u - u50) / scale): linear in (lo, hi - lo) for fixed
    # (u50, scale), so those two are profiled out by least squares
    u50, log_scale = params
    z = 1.0 / (1.0 + np.exp(-np.clip((u - u50) / math.exp(log_scale), -500, 500)))
    return _ols_rss(np.column_stack([np.ones_like(u), z]), y)


def shift_shape(n_eff: np.ndarray, shift: np.ndarray, sharp_delta_aic: float = SHARP_DELTA_AIC) -> dict:
    """Does the (continuous) shift follow a smooth curve in n_eff, or a step?

    Least-squares fits of the per-trial shift against n_eff, compared by AIC (Gaussian
    likelihood, sigma at its MLE and counted as a parameter): two smooth curves - linear in
    ln n_eff (k = 3) and a power law a + b n_eff^c (k = 4; c < 0 saturates, c -> 0 is linear in
    log) - against a sigmoid in ln n_eff (k = 5). The shift counts as sharp only when the
    sigmoid beats the better smooth curve by ``sharp_delta_aic`` (10: "essentially no support"
    for the other model, Burnham & Anderson 2002); a wide sigmoid is close to linear in log and
    does not beat it by that much. The nonlinear parameters are profiled (the linear ones solved
    exactly for each) and then refined by scipy's bounded scalar / Nelder-Mead minimizers, so
    no start-value guess decides the outcome.

    Returns ``{"smooth": bool | None, "aic": {...}, "delta_aic": sigmoid - best smooth,
    "sigmoid": {"n50", "width"}, "note"}``; ``smooth`` is ``None`` with fewer than
    ``MIN_TRIALS_FOR_SHAPE`` trials or fewer than 3 distinct n_eff values."""
    n = np.asarray(n_eff, dtype=float)
    y = np.asarray(shift, dtype=float)
    if n.size < MIN_TRIALS_FOR_SHAPE or np.unique(n).size < 3:
        return {"smooth": None, "aic": {}, "delta_aic": None, "sigmoid": None,
                "note": f"{n.size} trials at {np.unique(n).size} n_eff values: too few to judge "
                        f"the shape of the shift (needs {MIN_TRIALS_FOR_SHAPE} trials, 3 values)"}
    u = np.log(n)
    count = n.size
    aic = {"linear_log": _gauss_aic(_ols_rss(np.column_stack([np.ones_like(u), u]), y), count, 3)}
    # power law: profile c on a grid, refine around the best grid point
    grid_c = np.r_[np.linspace(-3, -0.01, 60), np.linspace(0.01, 3, 60)]
    rss_c = np.array([_rss_power(c, n, y) for c in grid_c])
    c0 = int(rss_c.argmin())
    lo_c, hi_c = grid_c[max(c0 - 1, 0)], grid_c[min(c0 + 1, grid_c.size - 1)]
    refined = optimize.minimize_scalar(_rss_power, bounds=(lo_c, hi_c), args=(n, y), method="bounded")
    aic["power"] = _gauss_aic(min(float(refined.fun), float(rss_c[c0])), count, 4)
    # sigmoid: profile (u50, ln scale) on a grid over the sampled range, refine by Nelder-Mead
    span = float(u.max() - u.min())
    grid = [(m, s) for m in np.linspace(u.min(), u.max(), 25)
            for s in np.log(np.geomspace(span / 200, span * 2, 25))]
    rss_grid = [_rss_sigmoid(np.array(p), u, y) for p in grid]
    start = np.array(grid[int(np.argmin(rss_grid))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # bounded: a sigmoid far outside the data, or wider than 10x the range, is a straight line
        bounds = [(u.min() - span, u.max() + span), (math.log(span / 200), math.log(span * 10))]
        best = optimize.minimize(_rss_sigmoid, start, args=(u, y), method="Nelder-Mead", bounds=bounds,
                                 options={"xatol": 1e-6, "fatol": 1e-12, "maxiter": 4000})
    params = best.x if best.fun <= min(rss_grid) else start
    aic["sigmoid"] = _gauss_aic(min(float(best.fun), float(min(rss_grid))), count, 5)
    delta = aic["sigmoid"] - min(aic["linear_log"], aic["power"])
    scale = math.exp(float(params[1]))
    return {"smooth": bool(delta > -sharp_delta_aic), "aic": aic, "delta_aic": float(delta),
            "sigmoid": {"n50": float(math.exp(float(params[0]))), "width": 2 * scale * math.log(9)},
            "note": ""}


# ----------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------

def _switching(level: dict, base_bimodal: bool, alpha: float) -> bool:
    """Is this level's distribution bimodal in a way a smooth shift cannot produce? The deltas
    around their trial's mean are bimodal (some probes moved far more than others), or the
    tuned margins are bimodal while the base margins were not (when the base is already
    bimodal, a smooth shift keeps it so, and only the deltas can tell)."""
    delta_bimodal = level["delta_dip_p"] is not None and level["delta_dip_p"] < alpha
    tuned_bimodal = level["dip_p"] is not None and level["dip_p"] < alpha
    return delta_bimodal or (tuned_bimodal and not base_bimodal)


def check_metric_artifact(data: StudyData, trials: list[Trial] | None = None, levels: int = 5,
                          alpha: float = ALPHA, tolerance: float = FLIP_TOLERANCE,
                          sharp_delta_aic: float = SHARP_DELTA_AIC) -> dict:
    """Is the flip rate's sigmoid a metric artifact of a smoothly shifting margin distribution?

    ``artifact`` is True when all three hold:

    1. **unimodal at every level**: no level is bimodal by the dip test at ``alpha`` (see
       :func:`margin_levels`: tuned margins, and deltas around their trial's mean, tested per
       trial and combined per level; a bimodal base excuses the tuned margins but not the
       deltas);
    2. **a smooth shift**: the per-trial shift (mean delta over probes) is not a step in n_eff
       (:func:`shift_shape`: a sigmoid does not beat linear-in-log and a power law by
       ``sharp_delta_aic``);
    3. **the smooth shift accounts for the flips**: per trial, :func:`smooth_flip_rate` of the
       base margins, the trial's shift and its level's observed ``spread``; the mean over trials
       of |observed - predicted| is at most ``tolerance`` (0.1: one eligible probe in ten).
       An absolute tolerance rather than a chi-square: the same probes are scored in every
       trial, so trials are not independent binomial draws, and a chi-square would overstate
       the evidence; 0.1 in flip-rate units is also what a reader can see on the figure.

    Otherwise False, with the ``reason``: probes switching (bimodal at a level), a sharp shift,
    flips exceeding (or falling short of) the smooth prediction - or too little to judge
    (fewer than 3 levels, too few trials for the shape of the shift, no probe with base margin
    <= 0). ``artifact`` says whether a smooth shift *explains* the flip rate; whether the flip
    rate looks sharp at all is the threshold fit's question - the verdict reports a metric
    artifact when that fit says sharp and this check says True.

    Returns ``{"artifact", "reason", "checks": {"unimodal", "smooth_shift", "prediction_fits"}
    (each True / False / None = not judged), "levels" (as :func:`margin_levels`, plus
    ``predicted_flip_rate``, the mean over its trials, and ``switching``), "trials" (per trial:
    number, n_eff, lr, level, shift, flips, eligible, observed, predicted, spread), "shift_shape",
    "base": {"dip", "dip_p", "eligible"}, "mean_abs_gap", "mean_gap" (observed - predicted),
    "max_abs_gap", "alpha", "tolerance"}``.
    """
    trials = list(data.trials if trials is None else trials)
    level_list = margin_levels(data, trials, levels)
    base = np.asarray(data.base_margins, dtype=float)
    base_dip, base_p = dip_test(base)
    base_bimodal = base_p is not None and base_p < alpha
    by_number = {t.number: t for t in trials}
    rows: list[dict] = []
    for level in level_list:
        predicted = []
        for number, shift in zip(level["trial_numbers"], level["trial_shifts"], strict=True):
            t = by_number[number]
            flipped, eligible = _flips(base, t.margins)
            spread = level["spread"] or 0.0
            pred = smooth_flip_rate(base, shift, spread)
            rows.append({"number": number, "n_eff": t.n_eff, "lr": t.lr, "level": level["level"],
                         "shift": shift, "flips": flipped, "eligible": eligible,
                         "observed": flipped / eligible if eligible else None,
                         "predicted": pred if math.isfinite(pred) else None, "spread": spread})
            predicted.append(pred)
        level["predicted_flip_rate"] = float(np.mean(predicted)) if base.size and (base <= 0).any() else None
        level["switching"] = _switching(level, base_bimodal, alpha)
    rows.sort(key=lambda r: (r["n_eff"], r["number"]))

    gaps = np.array([r["observed"] - r["predicted"] for r in rows
                     if r["observed"] is not None and r["predicted"] is not None])
    mean_abs = float(np.abs(gaps).mean()) if gaps.size else None
    mean_gap = float(gaps.mean()) if gaps.size else None
    shape = shift_shape(np.array([r["n_eff"] for r in rows]), np.array([r["shift"] for r in rows]),
                        sharp_delta_aic)
    switching = [lv for lv in level_list if lv["switching"]]
    judged_dip = any(lv["dip_p"] is not None for lv in level_list)
    checks = {
        "unimodal": (not switching) if judged_dip else None,
        "smooth_shift": shape["smooth"],
        "prediction_fits": (mean_abs <= tolerance) if mean_abs is not None else None,
    }

    def span(lv: dict) -> str:
        lo, hi = lv["n_eff_min"], lv["n_eff_max"]
        return f"n_eff {lo}" if lo == hi else f"n_eff {lo}-{hi}"

    if len(level_list) < MIN_LEVELS:
        artifact, reason = False, (f"Not judged: {len(level_list)} n_eff level(s); the check needs "
                                   f"at least {MIN_LEVELS} to see a shape.")
    elif not (base <= 0).any():
        artifact, reason = False, ("Not judged: no probe has a base margin <= 0, so the flip rate "
                                   "is undefined.")
    elif switching:
        where = "; ".join(f"{span(lv)} ({_p_text(lv['dip_p'])}, deltas' {_p_text(lv['delta_dip_p'])})"
                          for lv in switching)
        artifact, reason = False, (f"Not a metric artifact: the per-probe margins are bimodal at "
                                   f"{where} - probes switch rather than shift together.")
    elif checks["unimodal"] is None:
        artifact, reason = False, "Not judged: too few probes per level for a dip test."
    elif shape["smooth"] is None:
        artifact, reason = False, f"Not judged: {shape['note']}."
    elif not shape["smooth"]:
        artifact, reason = False, (
            f"Not a metric artifact: the continuous shift itself is a step in n_eff (a sigmoid "
            f"beats the smooth curves by {-shape['delta_aic']:.1f} AIC, width "
            f"{shape['sigmoid']['width']:.2f} in ln n_eff near n_eff {shape['sigmoid']['n50']:.3g}).")
    elif not checks["prediction_fits"]:
        direction = "exceed" if mean_gap > 0 else "fall short of"
        artifact, reason = False, (
            f"Not a metric artifact: the observed flip rates {direction} what the smooth shift "
            f"predicts (mean |observed - predicted| = {mean_abs:.3f} > {tolerance}).")
    else:
        artifact, reason = True, (
            f"Metric artifact: the margins are unimodal at all {len(level_list)} n_eff levels "
            f"(every dip p >= {alpha}), the shift follows a smooth curve in n_eff (a sigmoid's AIC is "
            f"{shape['delta_aic']:+.1f} against the best smooth curve; sharp needs <= "
            f"-{sharp_delta_aic:g}), and moving every "
            f"probe by the trial's shift predicts the observed flip rates to within "
            f"{mean_abs:.3f} on average - a sigmoid in flip rate is what a smooth shift alone gives.")
    return {
        "artifact": artifact, "reason": reason, "checks": checks, "levels": level_list,
        "trials": rows, "shift_shape": shape,
        "base": {"dip": base_dip, "dip_p": base_p, "eligible": int((base <= 0).sum())},
        "mean_abs_gap": mean_abs, "mean_gap": mean_gap,
        "max_abs_gap": float(np.abs(gaps).max()) if gaps.size else None,
        "alpha": alpha, "tolerance": tolerance,
    }


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def _p_text(p: float | None) -> str:
    return "dip p n/a" if p is None else f"dip p = {p:.2g}"


def ridge_figure(levels: list[dict]) -> Any:
    """Per-level tuned-margin distributions as horizontal half-violins on one margin axis (a
    ridge plot), lowest n_eff at the bottom above a reference violin of the base margins; each
    label carries the level's n_eff range and its dip p-value; the zero line (where a probe
    flips) is marked. ``levels`` as returned by :func:`margin_levels` (or the check's
    ``levels``)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if not levels:
        fig.update_layout(title="Per-probe margins: no trials")
        return fig
    base = np.asarray(levels[0]["base_margins"], dtype=float)
    _, base_p = dip_test(base)
    rows = [(f"base ({_p_text(base_p)})", base, "#888888")]
    for lv in levels:
        lo, hi = lv["n_eff_min"], lv["n_eff_max"]
        rng = f"{lo}" if lo == hi else f"{lo}-{hi}"
        rows.append((f"n_eff {rng} ({_p_text(lv['dip_p'])})", np.asarray(lv["tuned_margins"]),
                     "#d62728" if lv.get("switching") else "#1f77b4"))
    for name, values, color in rows:
        fig.add_trace(go.Violin(x=values, y=[name] * len(values), name=name, orientation="h",
                                side="positive", width=1.8, points=False, line_color=color,
                                meanline_visible=True, showlegend=False, spanmode="hard"))
    fig.add_vline(x=0, line_dash="dash", line_color="black",
                  annotation_text="margin 0 (flip)", annotation_position="top")
    fig.update_layout(title="Per-probe margin distributions by n_eff level (Hartigan's dip test; "
                            "red: bimodal)",
                      xaxis_title="margin (tuned; base for the reference)",
                      yaxis_title="n_eff level", violingap=0, template="plotly_white",
                      height=max(320, 90 * len(rows)))
    return fig


def flip_figure(check: dict) -> Any:
    """Observed flip rate per trial against n_eff (log x) with the smooth-shift prediction
    overlaid (per trial, and per level as a line), titled with the check's conclusion.
    ``check`` as returned by :func:`check_metric_artifact`."""
    import plotly.graph_objects as go

    rows = [r for r in check["trials"] if r["observed"] is not None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r["n_eff"] for r in rows], y=[r["observed"] for r in rows],
                             mode="markers", name="observed flip rate (per trial)",
                             marker={"color": "#1f77b4", "size": 8},
                             customdata=[[r["number"], r["shift"]] for r in rows],
                             hovertemplate="trial %{customdata[0]}<br>n_eff %{x}<br>flip rate %{y:.2f}"
                                           "<br>shift %{customdata[1]:.3f}<extra></extra>"))
    pred = [r for r in rows if r["predicted"] is not None]
    fig.add_trace(go.Scatter(x=[r["n_eff"] for r in pred], y=[r["predicted"] for r in pred],
                             mode="markers", name="smooth-shift prediction (per trial)",
                             marker={"color": "#ff7f0e", "symbol": "x", "size": 8}))
    lv = [x for x in check["levels"] if x.get("predicted_flip_rate") is not None]
    fig.add_trace(go.Scatter(x=[x["n_eff_center"] for x in lv], y=[x["predicted_flip_rate"] for x in lv],
                             mode="lines", name="smooth-shift prediction (level mean)",
                             line={"color": "#ff7f0e"}))
    fig.add_trace(go.Scatter(x=[x["n_eff_center"] for x in lv], y=[x["flip_rate"] for x in lv],
                             mode="lines", name="observed (level)", line={"color": "#1f77b4", "dash": "dot"}))
    verdict = "metric artifact" if check["artifact"] else "not a metric artifact"
    note = {"text": "<br>".join(textwrap.wrap(check["reason"], 120)), "xref": "paper", "yref": "paper",
            "x": 0, "y": -0.32, "yanchor": "top", "showarrow": False, "align": "left", "font": {"size": 10}}
    fig.update_layout(title=f"Flip rate vs n_eff: {verdict}", template="plotly_white",
                      xaxis={"type": "log", "title": "n_eff (log)"},
                      yaxis={"title": "flip rate (base margin <= 0 -> tuned > 0)", "range": [-0.05, 1.05]},
                      annotations=[note], margin={"b": 170})
    return fig
