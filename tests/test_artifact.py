"""The metric-artifact check on synthetic studies written into a real Optuna storage through the
data contract (study/analysis/data.py), with known ground truth."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import optuna
import pytest
from scipy import optimize, stats

from study.analysis.artifact import (
    check_metric_artifact,
    flip_figure,
    margin_levels,
    ridge_figure,
    smooth_flip_rate,
)
from study.analysis.data import StudyData, load_study_data, write_trial

N_PROBES = 40
N_EFFS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
SEEDS = (0, 1)


def make_study(tmp_path, tuned: Callable[[np.ndarray, int, np.random.Generator], np.ndarray],
               n_effs=N_EFFS, seeds=SEEDS, rng_seed: int = 7) -> StudyData:
    """A study of len(n_effs) x len(seeds) trials; ``tuned(base, n_eff, rng)`` gives a trial's
    tuned margins. Written to sqlite and read back through the contract."""
    rng = np.random.default_rng(rng_seed)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="synthetic",
                                direction="maximize")
    base = rng.normal(-0.3, 0.5, N_PROBES)
    study.set_user_attr("probe_ids", [f"p{i}" for i in range(N_PROBES)])
    study.set_user_attr("base_probe_margins", [float(b) for b in base])
    for n_eff in n_effs:
        for seed in seeds:
            margins = tuned(base, n_eff, rng)
            m = 4 if n_eff >= 16 else 1
            write_trial(study, {
                "n_real": n_eff // m, "dream_multiplier": m, "lr": 1e-3, "batch_size": 8,
                "epochs": 1, "steps": math.ceil(n_eff / 8), "seed": seed,
                "dream_strategy": "template", "train_on": "chosen",
                "shift": float((margins - base).mean()), "forgetting": 0.01, "margins": margins})
    return load_study_data(study)


def smooth_shift(n_eff: float) -> float:
    """Linear in ln n_eff: no threshold anywhere in the continuous score."""
    return 0.45 * math.log(n_eff / 4)


def smooth_tuned(base, n_eff, rng):
    # every probe moves by the same smooth shift, a little seed noise on the shift, small
    # probe-to-probe noise
    return base + smooth_shift(n_eff) + rng.normal(0, 0.03) + rng.normal(0, 0.05, base.size)


def jump_probability(n_eff: float) -> float:
    return 1 / (1 + math.exp(-(math.log(n_eff) - math.log(64)) / 0.35))


def switching_tuned(base, n_eff, rng):
    # each probe either stays near its base margin or jumps to +1.5
    jumped = rng.random(base.size) < jump_probability(n_eff)
    return np.where(jumped, 1.5 + rng.normal(0, 0.1, base.size), base + rng.normal(0, 0.05, base.size))


def test_smooth_unimodal_shift_with_sigmoid_flip_rate_is_flagged(tmp_path):
    data = make_study(tmp_path, smooth_tuned)
    check = check_metric_artifact(data, data.trials)

    # the scenario is what it claims: a flip rate that looks sigmoid - flat near 0, a steep rise,
    # flat near 1 - well fitted by a logistic in ln n_eff whose rise is narrower than the range
    rows = [r for r in check["trials"] if r["observed"] is not None]
    u = np.log([r["n_eff"] for r in rows])
    obs = np.array([r["observed"] for r in rows])
    assert obs[u == u.min()].max() <= 0.1 and obs[u == u.max()].min() >= 0.9

    def logistic(x, m, s):
        return 1 / (1 + np.exp(-(x - m) / s))

    (m, s), _ = optimize.curve_fit(logistic, u, obs, p0=[np.median(u), 0.5])
    r2 = 1 - ((obs - logistic(u, m, s)) ** 2).sum() / ((obs - obs.mean()) ** 2).sum()
    assert r2 > 0.95 and 2 * s * math.log(9) < 0.6 * (u.max() - u.min())

    assert len(check["levels"]) == 5
    assert all(lv["dip_p"] >= 0.05 and lv["delta_dip_p"] >= 0.05 for lv in check["levels"])
    assert check["checks"] == {"unimodal": True, "smooth_shift": True, "prediction_fits": True}
    assert check["mean_abs_gap"] <= 0.1
    assert check["artifact"] is True
    assert check["reason"].startswith("Metric artifact")
    # the observed per-probe spread is what the prediction used, and it is the noise put in
    assert all(0.03 < lv["spread"] < 0.08 for lv in check["levels"])


def test_bimodal_switching_is_not_flagged(tmp_path):
    data = make_study(tmp_path, switching_tuned)
    check = check_metric_artifact(data, data.trials)
    assert check["artifact"] is False
    middle = next(lv for lv in check["levels"] if lv["n_eff_min"] <= 64 <= lv["n_eff_max"])
    assert 0 < middle["level"] < len(check["levels"]) - 1  # an intermediate level
    assert middle["dip_p"] < 0.05
    assert middle["switching"] is True
    assert check["checks"]["unimodal"] is False
    assert "bimodal" in check["reason"]
    # the lowest and highest levels are unimodal: bimodality sits where probes are switching
    assert check["levels"][0]["dip_p"] >= 0.05 and check["levels"][-1]["dip_p"] >= 0.05
    # and the shift itself is a step: the other reason it is no artifact
    assert check["checks"]["smooth_shift"] is False


def test_excess_flips_over_a_smooth_shift_are_not_flagged(tmp_path):
    """Unimodal, smoothly shifting margins, but the probes below zero are pushed just over it
    once n_eff passes 64 - more flips than the mean shift and scatter predict."""

    def tuned(base, n_eff, rng):
        out = base + 0.05 * math.log(n_eff / 4) + rng.normal(0, 0.05, base.size)
        if n_eff >= 64:
            out = np.where(base <= 0, np.maximum(out, 0.05 + rng.uniform(0, 0.05, base.size)), out)
        return out

    data = make_study(tmp_path, tuned)
    check = check_metric_artifact(data, data.trials)
    assert check["mean_gap"] > 0.1  # observed above predicted
    assert check["checks"]["prediction_fits"] is False
    assert check["artifact"] is False


def test_smooth_flip_rate_by_hand():
    base = np.array([-0.5, -0.1, 0.0, 0.3])
    shift, spread = 0.2, 0.1
    by_hand = np.mean([stats.norm.cdf((-0.5 + 0.2) / 0.1), stats.norm.cdf((-0.1 + 0.2) / 0.1),
                       stats.norm.cdf((0.0 + 0.2) / 0.1)])
    assert smooth_flip_rate(base, shift, spread) == pytest.approx(by_hand, abs=1e-12)
    assert smooth_flip_rate(base, shift) == pytest.approx(2 / 3)  # no scatter: a step at 0
    assert smooth_flip_rate(base, -1.0, 0.0) == 0.0
    assert math.isnan(smooth_flip_rate(np.array([0.1, 0.4]), 0.2, 0.1))  # nobody below zero


def test_levels_log_spaced_and_fewer_when_fewer_values(tmp_path):
    data = make_study(tmp_path, smooth_tuned)
    levels = margin_levels(data, data.trials, levels=5)
    assert len(levels) == 5 and all(lv["n_trials"] >= 1 for lv in levels)
    # contiguous, ordered, every trial in exactly one level
    assert sum(lv["n_trials"] for lv in levels) == len(data.trials)
    assert all(a["n_eff_max"] < b["n_eff_min"] for a, b in pairwise(levels))
    assert len(levels[0]["tuned_margins"]) == levels[0]["n_trials"] * N_PROBES
    assert levels[0]["note"] == ""
    # clustered n_eff: log-spaced bins would leave some empty; the widest gap is split instead
    clustered = [t for t in data.trials if t.n_eff in (4, 8, 16, 512, 1024)]
    assert [(lv["n_eff_min"], lv["n_eff_max"]) for lv in margin_levels(data, clustered, 5)] == [
        (4, 4), (8, 8), (16, 16), (512, 512), (1024, 1024)]
    few = [t for t in data.trials if t.n_eff in (16, 64, 256)]
    three = margin_levels(data, few, levels=5)
    assert [lv["n_eff_min"] for lv in three] == [16, 64, 256]
    assert "only 3 distinct n_eff values" in three[0]["note"]
    # flip rate by the science's definition
    lv = three[0]
    base = np.tile(np.asarray(lv["base_margins"]), lv["n_trials"])
    tuned = np.asarray(lv["tuned_margins"])
    assert lv["flip_rate"] == pytest.approx(((base <= 0) & (tuned > 0)).sum() / (base <= 0).sum())


def test_too_few_levels_is_not_judged(tmp_path):
    data = make_study(tmp_path, smooth_tuned, n_effs=(16, 64))
    check = check_metric_artifact(data, data.trials)
    assert check["artifact"] is False and check["reason"].startswith("Not judged")


def test_tied_margins_are_jittered_reproducibly(tmp_path):
    # margins that did not move at all: exact ties with the base
    data = make_study(tmp_path, lambda base, n, rng: np.round(base, 1), n_effs=(4, 8, 16, 32, 64))
    a = margin_levels(data, data.trials)
    b = margin_levels(data, data.trials)
    assert all(x["dip_p"] is not None and x["dip_p"] == y["dip_p"] for x, y in zip(a, b, strict=True))


def test_figures(tmp_path):
    data = make_study(tmp_path, switching_tuned)
    check = check_metric_artifact(data, data.trials)
    ridge = ridge_figure(check["levels"])
    names = [t.name for t in ridge.data]
    assert len(names) == len(check["levels"]) + 1 and names[0].startswith("base")
    assert all("dip p" in n for n in names)
    assert any(s.x0 == 0 and s.x1 == 0 for s in ridge.layout.shapes)  # the zero line
    flips = flip_figure(check)
    assert flips.layout.xaxis.type == "log"
    assert len(flips.data[0].x) == sum(r["observed"] is not None for r in check["trials"])
    assert "not a metric artifact" in flips.layout.title.text
