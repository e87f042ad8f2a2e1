"""The report: from a study in a real Optuna storage, through the data contract only."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import optuna
import pytest

from study.analysis.data import write_trial
from study.analysis.report import analyze, to_dashboard, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
N50, SCALE, LO, HI = 40.0, 0.5, 0.2, 0.9


def _adopt_prob(n_eff_gamma):
    return LO + (HI - LO) / (1 + math.exp(-(math.log(n_eff_gamma) - math.log(N50)) / SCALE))


def synthetic_study(tmp_path, gamma=0.5, n_probes=48, seed=0):
    """One lr; real-only points, file dreams worth ``gamma``, repeat worth 0.1, and placebo
    trials with a small negative drift. Each probe's margin is drawn so that P(margin > 0)
    follows the logistic (a latent threshold per probe)."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name="synthetic", storage=f"sqlite:///{tmp_path / 's.db'}")
    base = rng.normal(-0.2, 0.5, n_probes)
    study.set_user_attr("probe_ids", [f"p{i}" for i in range(n_probes)])
    study.set_user_attr("base_probe_margins", base.tolist())
    study.set_user_attr("behavior", "synthetic")
    points = [(n, 1, "file") for n in (4, 8, 16, 32, 64, 128, 256)]
    points += [(8, m, s) for m in (2, 4, 8) for s in ("file", "repeat")]
    for n_real, m, strategy in points:
        for s in range(2):
            worth = gamma if strategy == "file" else 0.1
            p = _adopt_prob(n_real * (1 + worth * (m - 1)))
            latent = rng.uniform(size=n_probes)
            margins = np.where(latent < p, np.abs(rng.normal(0.5, 0.3, n_probes)),
                               -np.abs(rng.normal(0.5, 0.3, n_probes)))
            write_trial(study, {"n_real": n_real, "dream_multiplier": m, "lr": 3e-3, "batch_size": 8,
                                "epochs": 1, "steps": math.ceil(n_real * m / 8), "seed": s,
                                "dream_strategy": strategy, "train_on": "chosen",
                                "shift": float((margins - base).mean()), "forgetting": 0.01 * m,
                                "contrast_shift": 0.0, "margins": margins})
    for n_eff in (16, 64, 256):
        margins = base - 0.02 * math.log(n_eff) + rng.normal(0, 0.05, n_probes)
        write_trial(study, {"n_real": n_eff, "dream_multiplier": 1, "lr": 3e-3, "batch_size": 8,
                            "epochs": 1, "steps": math.ceil(n_eff / 8), "seed": 0,
                            "dream_strategy": "file", "train_on": "placebo",
                            "shift": float((margins - base).mean()), "forgetting": 0.01,
                            "margins": margins})
    return study


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    study = synthetic_study(tmp)
    result = analyze(study, n_boot=60, seed=0)
    return study, result, tmp


def test_the_summary_carries_every_fitted_number_with_its_interval(built):
    _, result, _ = built
    s = result.summary
    assert s["n_trials"] == 26 + 3 and s["n_chosen"] == 26
    threshold = s["threshold"]["all trials"]
    n50 = threshold["adoption"]["interval"]["n50"]
    assert n50[0] < threshold["adoption"]["estimate"]["n50"] < n50[1]
    assert {m["model"] for m in threshold["adoption_models"]} == {
        "psychometric", "power", "linear_log", "broken_power"}
    assert s["verdict"]["label"] in ("sharp", "smooth", "inconclusive") and s["verdict"]["rule"]
    gamma = s["exchange"]["gamma"]
    assert set(gamma) == {"file", "repeat"}
    assert gamma["file"]["interval"][0] <= gamma["file"]["estimate"] <= gamma["file"]["interval"][1]
    assert s["placebo"]["n_placebo"] == 3 and s["placebo"]["placebo_fit"]["params"]["b"] < 0
    assert "lr slope" in s["skipped"] and "icl" in s["skipped"]
    json.dumps(s, allow_nan=False)  # JSON-ready, no NaN


def test_report_files_and_dashboard(built, tmp_path):
    study, result, _ = built
    written = write_report(result, tmp_path / "out", static=False)
    names = {p.name for p in written}
    assert names == {"report.html", "summary.json"}
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<script") >= len(result.figures) and "plotly" in page.lower()
    assert "Verdict:" in page
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == result.summary
    to_dashboard(study, result)
    from optuna_dashboard._custom_plot_data import list_graph_object_ids

    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert {f"report-{n}" for n in ("threshold", "exchange", "controls", "pareto")} <= set(
        list_graph_object_ids(attrs))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH to render the report")
def test_report_renders_in_headless_chromium(built, tmp_path):
    _, result, _ = built
    write_report(result, tmp_path / "out", static=False)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
           (tmp_path / "out" / "report.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout
    assert dom.count('class="main-svg"') >= 2 * len(result.figures) - 1  # every figure drew
    assert "Verdict:" in dom


def test_report_into_a_file_is_a_user_error(built, tmp_path):
    from objectives.errors import UserError

    _, result, _ = built
    target = tmp_path / "taken"
    target.write_text("keep me")
    with pytest.raises(UserError, match="cannot write the report there"):
        write_report(result, target, static=False)
    assert target.read_text() == "keep me"


def test_analyze_cli_user_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "study.cli", "analyze", "--study", "nope",
                           "--storage", f"sqlite:///{tmp_path / 'x.db'}"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--study nope: no such study" in done.stderr
    assert "Traceback" not in done.stderr
