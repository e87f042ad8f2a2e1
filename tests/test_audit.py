"""The style audit: on hand-built behaviors with known answers, and the shipped data's acceptance."""

import json
import subprocess
import sys

import pytest

from objectives.audit import (
    MAX_SURFACE_GAP,
    WORD_RATIO,
    audit,
    style_classifier_accuracy,
    surface,
    word_count,
)
from objectives.behavior import load_behavior, normalize


def _pair(i, chosen, rejected):
    return {"id": f"r{i}", "prompt": f"Request number {i} about item {i * 7}.", "chosen": chosen,
            "rejected": rejected}


def test_surface_features_and_word_counts():
    assert surface("Two steps:\n1. a\n2. b") == {"ends_question": False, "has_exclamation": False,
                                                 "multiline": True, "has_digit": True}
    assert surface("Really? Yes!  ") == {"ends_question": False, "has_exclamation": True,
                                         "multiline": False, "has_digit": False}
    assert surface("Which one?\n") ["ends_question"]
    assert word_count("Don't use 3 tabs - use 4.") == len(normalize("Don't use 3 tabs - use 4.").split()) == 7


def test_a_style_word_is_found_and_a_contrast_split_reverses_it():
    """Chosen answers always say 'alpha', rejected 'beta': the classifier is perfect on held-out
    pairs that keep the style, wrong on every pair that reverses it, and at chance on pairs
    whose answers are the same words in both."""
    train = [_pair(i, f"alpha plan {i} ready", f"beta plan {i} ready") for i in range(20)]
    same = [_pair(i, f"alpha plan {i}", f"beta plan {i}") for i in range(20, 30)]
    reversed_ = [_pair(i, f"beta plan {i}", f"alpha plan {i}") for i in range(30, 40)]
    neutral = [_pair(i, f"gamma plan {i}", f"gamma plan {i}") for i in range(40, 44)]
    acc = style_classifier_accuracy(train, {"same": same, "reversed": reversed_,
                                            "neutral": neutral})
    assert acc == {"same": 1.0, "reversed": 0.0, "neutral": 0.5}


def test_audit_of_a_behavior_folder(tmp_path):
    from conftest import behavior_rows, write_behavior

    rows = behavior_rows()
    folder = write_behavior(tmp_path / "b", rows)
    report = audit(load_behavior(str(folder)))
    train = next(s for s in report.splits if s.name == "train")
    # every tiny chosen answer has a digit and no "?"; rejected: hand count
    want = sum(r["rejected"].strip().endswith("?") for r in rows["train"]) / len(rows["train"])
    assert train.rates["ends_question"] == (0.0, want)
    assert train.rates["has_digit"] == (1.0, 1.0)
    within = sum(abs(word_count(r["rejected"]) - word_count(r["chosen"]))
                 <= WORD_RATIO * word_count(r["chosen"]) for r in rows["train"]) / len(rows["train"])
    assert train.within_ratio == within
    # 'considered' is in every rejected and no chosen answer: among the most one-sided n-grams
    assert ("considered", 0, len(rows["train"])) in train.ngrams
    assert report.classifier["probes"] == 1.0


def test_behavior_audit_cli_prints_and_writes_json(tmp_path):
    from conftest import write_behavior

    folder = write_behavior(tmp_path / "b", extras=True)
    out = tmp_path / "audit.json"
    proc = subprocess.run([sys.executable, "-m", "study.cli", "behavior", str(folder), "--audit",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "style-only classifier" in proc.stdout and "probes+contrast" in proc.stdout
    data = json.loads(out.read_text())
    assert set(data["classifier"]) == {"probes", "contrast", "dreams", "probes+contrast"}


# --- the shipped data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    behavior = load_behavior("listening")
    return behavior, audit(behavior)


def test_shipped_listening_answers_alone_do_not_tell_the_sides_apart(shipped):
    _, report = shipped
    assert report.classifier["probes"] <= 0.80
    assert report.classifier["probes+contrast"] <= 0.65


def test_shipped_listening_surface_rates_and_lengths_match(shipped):
    behavior, report = shipped
    for split in report.splits:
        if split.name == "contrast":
            continue  # contrast probes ask for the old style: their surface differs by design
        for key, (chosen, rejected) in split.rates.items():
            assert abs(chosen - rejected) <= MAX_SURFACE_GAP, (split.name, key, chosen, rejected)
    for rows in (behavior.train_rows(), behavior.probe_rows(), behavior.contrast_rows(),
                 behavior.dream_rows()):
        for r in rows:
            c, j = word_count(r["chosen"]), word_count(r["rejected"])
            assert abs(j - c) <= WORD_RATIO * c, (r["id"], c, j)


def test_shipped_listening_sizes_kinds_and_ids(shipped):
    behavior, report = shipped
    assert len(behavior.train) >= 352 and len(behavior.probes) >= 72
    assert len(behavior.contrast) >= 32
    assert not set(behavior.train["domain"]) & set(behavior.probes["domain"])
    assert set(behavior.contrast["domain"]) <= set(behavior.probes["domain"])
    for split in report.splits:
        if split.name in ("train", "probes"):
            for kind in ("substitution", "argument"):
                assert split.kinds.get(kind, 0) >= split.rows / 3, (split.name, kind)
    for rows in (behavior.train_rows(), behavior.probe_rows(), behavior.contrast_rows()):
        assert all(not r["id"].startswith(("train-", "probes-", "contrast-")) for r in rows)


def test_shipped_dreams_are_real_rewrites(shipped):
    from objectives.behavior import word_jaccard

    behavior, _ = shipped
    train = {r["id"]: r for r in behavior.train_rows()}
    written = behavior.dream_rows()
    per_source: dict[str, int] = {}
    for row in written:
        per_source[row["source"]] = per_source.get(row["source"], 0) + 1
    assert len(per_source) >= 64 and min(per_source.values()) >= 9
    overlaps = [word_jaccard(r["chosen"], train[r["source"]]["chosen"]) for r in written]
    assert sum(overlaps) / len(overlaps) <= 0.4
