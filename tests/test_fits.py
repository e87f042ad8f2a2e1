"""Curve fits, bootstrap intervals, gamma, the lr slope and the verdict (study/analysis/fits.py),
on synthetic studies written into a real Optuna storage through the data contract.

The synthetic margins follow a known adoption curve exactly: probe j in trial t has the latent
z = rho_p a_j + rho_s b_t + sqrt(1 - rho_p^2 - rho_s^2) e_jt (standard normal; a_j a probe
effect shared by every trial, b_t a seed effect shared by every probe of the trial) and the
margin Phi^-1(P(t)) - z, so P(margin > 0) = P(t), the truth, while probes and seeds are
correlated as in a real study (what the probe and seed bootstrap is there for).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import optuna
import pytest
from scipy import special, stats

from objectives.errors import UserError
from study.analysis import fits
from study.analysis.data import StudyData, load_study_data, write_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

LEVELS = [4, 7, 12, 20, 34, 58, 100, 170, 290, 512]  # n_eff, about x1.7 apart


def logistic(n50: float, width: float, lo: float = 0.1, hi: float = 0.9) -> Callable[[float], float]:
    scale = width / (2 * math.log(9))
    return lambda x: lo + (hi - lo) * float(special.expit((math.log(x) - math.log(n50)) / scale))


def point(n_real: int, m: int = 1, lr: float = 1e-3, batch: int = 8, epochs: int = 1,
          strategy: str = "template", train_on: str = "chosen") -> dict:
    return {"n_real": n_real, "dream_multiplier": m, "lr": lr, "batch_size": batch, "epochs": epochs,
            "steps": epochs * math.ceil(n_real * m / batch), "dream_strategy": strategy,
            "train_on": train_on}


def write_study(storage, name: str, rng: np.random.Generator, points: list[dict],
                truth: Callable[[dict], float], seeds: int = 3, n_probes: int = 40,
                rho_p: float = 0.5, rho_s: float = 0.3,
                shift_of: Callable[[dict], float] | None = None) -> StudyData:
    """A study whose adoption at each point follows ``truth(point)``; with ``shift_of``, the
    margins are instead base + shift_of(point) + noise (a known shift, for the placebo)."""
    study = optuna.create_study(storage=storage, study_name=name)
    a = rng.normal(size=n_probes)
    base = -0.5 + 0.3 * rng.normal(size=n_probes)
    study.set_user_attr("probe_ids", [f"p{j}" for j in range(n_probes)])
    study.set_user_attr("base_probe_margins", base.tolist())
    for p in points:
        for s in range(seeds):
            b = rng.normal()
            if shift_of is None:
                z = rho_p * a + rho_s * b + math.sqrt(1 - rho_p ** 2 - rho_s ** 2) * rng.normal(size=n_probes)
                margins = stats.norm.ppf(truth(p)) - z
            else:
                margins = base + shift_of(p) + 0.02 * b + 0.05 * rng.normal(size=n_probes)
            write_trial(study, {**p, "seed": s, "forgetting": None, "margins": margins,
                                "shift": float(np.mean(margins - base))})
    return load_study_data(study)


def adoption(data: StudyData, trials=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    trials = data.trials if trials is None else trials
    x = fits.dose_of(trials, "n_eff")
    k = np.array([data.adopted(t) for t in trials], dtype=float)
    return x, k, np.full(len(trials), float(len(data.probe_ids)))


@pytest.fixture()
def sqlite(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/s.db"


def by_n_eff(f: Callable[[float], float]) -> Callable[[dict], float]:
    return lambda p: f(p["n_real"] * p["dream_multiplier"])


# ---------------------------------------------------------------------------------------------

def test_fits_compare_and_predict_agree_with_their_likelihood():
    """predict() reproduces each fit's log-likelihood (the named parameters and the optimiser's
    agree), the psychometric beats the smooth models on logistic counts, compare() is sorted
    with weights summing to 1, and the Gaussian counts sigma in k."""
    rng = np.random.default_rng(3)
    x = np.repeat(np.array(LEVELS, float), 3)
    f = logistic(40, 1.2)
    n = np.full(len(x), 50.0)
    k = rng.binomial(50, [f(v) for v in x]).astype(float)
    got = fits.fit_all("binomial", x, k, n)
    for fit in got:
        p = fit.predict(x)
        ll = float(np.sum(stats.binom.logpmf(k, n, p)))
        assert ll == pytest.approx(fit.loglik, abs=1e-6), fit.model
        assert fit.aic == pytest.approx(2 * fit.k - 2 * fit.loglik)
        assert fit.bic == pytest.approx(fit.k * math.log(len(x)) - 2 * fit.loglik)
    rows = fits.compare(got)
    assert [r["aic"] for r in rows] == sorted(r["aic"] for r in rows)
    assert sum(r["akaike_weight"] for r in rows) == pytest.approx(1.0)
    assert rows[0]["delta_aic"] == 0.0
    by = {fit.model: fit for fit in got}
    assert by["psychometric"].aic < min(by["power"].aic, by["linear_log"].aic) - 10
    d = by["psychometric"].derived
    assert d["width"] == pytest.approx(math.log(d["n90"] / d["n10"]))
    assert d["width"] == pytest.approx(2 * by["psychometric"].params["scale"] * math.log(9))

    y = 0.3 + 0.1 * np.log(x) + 0.05 * rng.normal(size=len(x))
    lin = fits.fit_gaussian("linear_log", x, y)
    ols = stats.linregress(np.log(x), y)
    assert lin.params["b"] == pytest.approx(ols.slope, rel=1e-6)
    assert lin.params["a"] == pytest.approx(ols.intercept, rel=1e-6)
    assert lin.k == 3 and "sigma" in lin.params
    resid = y - lin.predict(x)
    assert lin.loglik == pytest.approx(float(np.sum(stats.norm.logpdf(resid, 0, lin.params["sigma"]))))
    with pytest.raises(ValueError):
        fits.compare([lin, by["power"]])  # different data


def test_logistic_recovered_inside_its_interval_in_17_of_20_studies(tmp_path):
    """n50 and width of a known logistic are each inside their 90% bootstrap interval in at
    least 17 of 20 seeded studies (3 seeds a point, 40 correlated probes). The 20 studies go
    into a file-backed JournalStorage: SQLite costs ~60 ms a trial here (600 trials)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    n50, width = 40.0, 1.5
    truth = by_n_eff(logistic(n50, width))
    hit_n50 = hit_width = 0
    for i in range(20):
        data = write_study(storage, f"logistic-{i}", np.random.default_rng(100 + i),
                           [point(n) for n in LEVELS], truth)
        boot = fits.bootstrap(data, data.trials, "adoption", "n_eff", "psychometric", 150, i, None)
        lo, hi = boot["interval"]["n50"]
        hit_n50 += lo <= n50 <= hi
        lo, hi = boot["interval"]["width"]
        hit_width += lo <= width <= hi
        assert boot["n_failed"] == 0
    print(f"coverage over 20 studies: n50 {hit_n50}, width {hit_width}")
    assert hit_n50 >= 17, hit_n50
    assert hit_width >= 17, hit_width


def test_sharp_logistic_is_called_sharp(sqlite):
    truth = by_n_eff(logistic(40, 1.0))
    data = write_study(sqlite, "sharp", np.random.default_rng(7), [point(n) for n in LEVELS], truth,
                       n_probes=80, rho_s=0.2)
    calls = []
    boot = fits.bootstrap(data, data.trials, "adoption", "n_eff", "psychometric", 150, 0,
                          lambda i, n: calls.append((i, n)))
    assert calls[-1] == (150, 150) and len(calls) == 150
    models = fits.fit_all("binomial", *adoption(data))
    label, rule = fits.verdict(models, boot)
    assert label == "sharp", rule
    assert "n50 = " in rule and "delta AIC" in rule
    lo, hi = boot["interval"]["n50"]
    assert lo < boot["estimate"]["n50"] < hi
    assert len(boot["band"]["x"]) == len(boot["band"]["lo"]) == len(boot["band"]["hi"])
    assert all(a <= b for a, b in zip(boot["band"]["lo"], boot["band"]["hi"], strict=True))
    # the metric-artifact check overrides the threshold's sharpness
    label, rule = fits.verdict(models, boot, artifact=True)
    assert label == "smooth" and "artifact" in rule
    zones = fits.against_hypothesis(boot)
    assert zones["n10"]["where"] == "below"  # the true n10 is 24: the hypothesis' 10 lies below
    assert zones["n90"]["where"] == "above"  # the true n90 is 66, far below the hypothesis' 200
    assert zones["n10"]["ratio"] == pytest.approx(boot["estimate"]["n10"] / 10)
    assert zones["n50"]["interval"] == boot["interval"]["n50"]
    assert fits.against_hypothesis(boot, {"n50": 40.0})["n50"]["where"] == "inside"  # the truth


@pytest.mark.parametrize("alpha,x0", [(0.4, 5.0), (0.8, 30.0), (2.0, 60.0)])
def test_smooth_power_law_is_not_called_sharp(sqlite, alpha, x0):
    def power(x: float) -> float:
        return 0.9 - 0.85 * (1 + x / x0) ** -alpha

    data = write_study(sqlite, f"power-{alpha}", np.random.default_rng(11), [point(n) for n in LEVELS],
                       by_n_eff(power))
    boot = fits.bootstrap(data, data.trials, "adoption", "n_eff", "psychometric", 100, 0, None)
    got = fits.fit_all("binomial", *adoption(data))
    label, rule = fits.verdict(got, boot)
    assert label != "sharp", rule
    assert label in ("smooth", "inconclusive")


def test_linear_in_log_rise_over_three_decades_is_called_smooth(sqlite):
    """Adoption rising linearly in ln n_eff from 0.1 at 2 to 0.9 at 4096: smooth (10 of 10
    seeded studies in a trial run)."""
    def linear(x: float) -> float:
        return 0.1 + 0.8 * math.log(x / 2) / math.log(2048)

    levels = [int(v) for v in np.unique(np.round(np.geomspace(2, 4096, 12)))]
    data = write_study(sqlite, "linear", np.random.default_rng(12), [point(n) for n in levels],
                       by_n_eff(linear))
    boot = fits.bootstrap(data, data.trials, "adoption", "n_eff", "psychometric", 100, 0, None)
    label, rule = fits.verdict(fits.fit_all("binomial", *adoption(data)), boot)
    assert label == "smooth", rule
    assert boot["interval"]["width"][0] > math.log(10)


def test_too_few_points_is_inconclusive(sqlite):
    truth = by_n_eff(logistic(40, 1.0))
    data = write_study(sqlite, "few", np.random.default_rng(5), [point(n) for n in (8, 40, 200)], truth,
                       seeds=2)
    boot = fits.bootstrap(data, data.trials, "adoption", "n_eff", "psychometric", 50, 0, None)
    label, rule = fits.verdict(fits.fit_all("binomial", *adoption(data)), boot)
    assert label == "inconclusive"
    assert "6 trials at 3 distinct n_eff levels" in rule
    # enough trials but 4 levels: still inconclusive
    data = write_study(sqlite, "four", np.random.default_rng(5), [point(n) for n in (8, 30, 60, 200)],
                       truth, seeds=3)
    boot = fits.bootstrap(data, data.trials, "adoption", "n_eff", "psychometric", 50, 0, None)
    label, rule = fits.verdict(fits.fit_all("binomial", *adoption(data)), boot)
    assert label == "inconclusive" and "4 distinct" in rule


def test_known_gamma_is_recovered_inside_its_interval(sqlite):
    """gamma_template = 0.5 and gamma_repeat = 0.1: each inside its 90% interval, the intervals
    informative (template's excludes repeat's value and 1), repeat's beside template's."""
    gam = {"template": 0.5, "repeat": 0.1}
    f = logistic(40, 1.5)

    def truth(p: dict) -> float:
        g = gam[p["dream_strategy"]] if p["dream_multiplier"] > 1 else 0.0
        return f(p["n_real"] * (1 + g * (p["dream_multiplier"] - 1)))

    points = [point(n) for n in LEVELS[:8]]
    points += [point(n, m, strategy=s) for s in gam for n in (4, 10, 25) for m in (3, 8)]
    data = write_study(sqlite, "gamma", np.random.default_rng(21), points, truth, seeds=2, n_probes=50)
    out = fits.fit_exchange_rate(data, data.trials, 100, 0, None)
    assert out["strategies"] == ["repeat", "template"]
    for s, g in gam.items():
        lo, hi = out["gamma"][s]["interval"]
        assert lo <= g <= hi, (s, out["gamma"][s])
        assert hi - lo < 1.0, (s, out["gamma"][s])
    assert out["gamma"]["template"]["gamma_1_inside"] is False
    lo, hi = out["versus_repeat"]["template"]["interval"]
    assert lo > 0, out["versus_repeat"]
    assert out["versus_repeat"]["template"]["repeat"] == out["gamma"]["repeat"]["estimate"]
    assert out["n_failed"] == 0
    with pytest.raises(UserError):
        fits.fit_exchange_rate(data, [t for t in data.trials if t.dream_multiplier > 1], 10, 0, None)


def test_psychometric_agrees_with_psignifit(sqlite):
    """Our maximum-likelihood logistic and psignifit's (GPL, test-only; logistic sigmoid in ln x,
    yes/no, overdispersion eta fixed at 0 so both use the plain binomial likelihood) on the same
    counts: n50 within 5%, width within 10%, asymptotes within 0.03. psignifit's width spans
    5%..95% of its unscaled sigmoid, 2 scale ln 19, ours 10%..90%, 2 scale ln 9."""
    psignifit = pytest.importorskip("psignifit")
    data = write_study(sqlite, "psignifit", np.random.default_rng(2), [point(n) for n in LEVELS],
                       by_n_eff(logistic(40, 1.5)))
    x, k, n = adoption(data)
    ours = fits.fit_binomial("psychometric", x, k, n)
    res = psignifit.psignifit(np.c_[np.log(x), k, n], sigmoid="logistic", experiment_type="yes/no",
                              fixed_parameters={"eta": 0.0}, verbose=False)
    theirs = res.parameter_estimate_MAP
    assert abs(ours.params["ln_n50"] - theirs["threshold"]) < math.log(1.05)
    their_width = theirs["width"] * math.log(9) / math.log(19)
    assert ours.derived["width"] == pytest.approx(their_width, rel=0.10)
    assert ours.params["lo"] == pytest.approx(theirs["gamma"], abs=0.03)
    assert ours.params["hi"] == pytest.approx(1 - theirs["lambda"], abs=0.03)


def test_lr_slope_recovered_and_minus_one_rejected(sqlite):
    """ln n50 = ln 40 - 0.5 (ln lr - mean ln lr): b = -0.5 inside its interval, b = -1 rejected."""
    lrs = (3e-4, 1e-3, 3e-3)
    mean_ln = float(np.mean(np.log(lrs)))

    def truth(p: dict) -> float:
        n50 = math.exp(math.log(40) - 0.5 * (math.log(p["lr"]) - mean_ln))
        return logistic(n50, 1.5)(p["n_real"])

    points = [point(n, lr=lr) for lr in lrs for n in LEVELS]
    data = write_study(sqlite, "lr", np.random.default_rng(8), points, truth, seeds=2)
    out = fits.fit_lr_slope(data, data.trials, 100, 0, None)
    lo, hi = out["interval"]
    assert lo <= -0.5 <= hi, out["interval"]
    assert hi < -0.1  # n50 does fall with lr
    assert out["test_minus_1"]["p"] < 0.05 and not out["test_minus_1"]["minus_1_inside"]
    assert out["aic"]["covariate"] < out["aic"]["b=-1"]
    assert set(out["aic"]) == {"covariate", "b=-1", "b=0", "steps_lr"}
    assert out["n50_at"]["0.0003"] > out["n50_at"]["0.003"]


def test_collapse_says_which_variable_the_change_follows(sqlite):
    """Epochs vary at fixed n_real, so steps and n_eff come apart; adoption follows steps."""
    f = logistic(12, 1.5)
    points = [point(n, epochs=e) for n in (8, 16, 32, 64, 128) for e in (1, 2, 4, 8)]
    data = write_study(sqlite, "steps", np.random.default_rng(4), points, lambda p: f(p["steps"]), seeds=2)
    out = fits.collapse(data, data.trials)
    assert out["follows"] == "steps", {d: v["adoption_aic"] for d, v in out["doses"].items()}
    assert out["aliases"] == {"steps_lr": "steps"}  # one lr: steps x lr is steps
    assert out["doses"]["n_eff"]["adoption_delta_aic"] > 10
    assert out["best_by_shift_r2"] == "steps"
    # one epoch at a fixed batch: n_eff and steps move together and cannot be told apart
    one = [t for t in data.trials if t.epochs == 1]
    assert fits.collapse(data, one)["follows"] == "indistinguishable"


def test_net_of_placebo_subtracts_the_placebo_line(sqlite):
    """Placebo shift 0.05 + 0.02 ln n_eff, chosen = placebo + 0.1 ln(n_eff / 4): the net shift
    is 0.1 ln(n_eff / 4); the net-shift bootstrap brackets the true slope."""
    def placebo(n: float) -> float:
        return 0.05 + 0.02 * math.log(n)

    def shift_of(p: dict) -> float:
        n = p["n_real"] * p["dream_multiplier"]
        return placebo(n) + (0.1 * math.log(n / 4) if p["train_on"] == "chosen" else 0.0)

    points = [point(n) for n in LEVELS[:8]] + [point(n, train_on="placebo") for n in (4, 20, 100, 290)]
    data = write_study(sqlite, "placebo", np.random.default_rng(9), points, lambda p: 0.5, seeds=2,
                       shift_of=shift_of)
    chosen = data.select(train_on="chosen")
    out = fits.net_of_placebo(data, chosen)
    assert out["n_placebo"] == 8
    assert out["placebo_fit"].params["b"] == pytest.approx(0.02, abs=0.01)
    want = np.array([0.1 * math.log(t.n_eff / 4) for t in chosen])
    assert np.max(np.abs(out["net"] - want)) < 0.08  # trial noise sd ~0.02
    assert np.polyfit(np.log([t.n_eff for t in chosen]), out["net"], 1)[0] == pytest.approx(0.1, abs=0.01)
    boot = fits.bootstrap(data, chosen, "net_shift", "n_eff", "linear_log", 100, 0, None)
    lo, hi = boot["interval"]["b"]
    assert lo <= 0.1 <= hi and hi - lo < 0.05
    gross = fits.bootstrap(data, chosen, "shift", "n_eff", "linear_log", 50, 0, None)
    assert gross["estimate"]["b"] == pytest.approx(0.12, abs=0.01)  # placebo's 0.02 not removed
    with pytest.raises(UserError):  # no placebo trials
        fits.net_of_placebo(StudyData(data.name, data.probe_ids, data.base_margins, chosen), chosen)


def test_no_change_is_inconclusive_not_smooth(sqlite):
    """Adoption flat at 0.7 over two decades (nothing moves): whatever model fits best, the
    verdict must not call a shape - the band at the lowest dose overlaps the band at the highest."""
    levels = [4, 8, 16, 32, 64, 128, 256]
    data = write_study(sqlite, "flat", np.random.default_rng(3), [point(n) for n in levels],
                       lambda p: 0.7, seeds=2)
    boot = fits.bootstrap(data, data.trials, "adoption", "n_eff", "psychometric", 100, 0, None)
    label, rule = fits.verdict(fits.fit_all("binomial", *adoption(data)), boot)
    assert label == "inconclusive" and "no change detected" in rule, rule
