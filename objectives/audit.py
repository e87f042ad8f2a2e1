"""Style audit of a behavior: can the answers alone, without the prompt, tell the sides apart?

If chosen and rejected differ in register (questions, "!", lists, stock phrases), a fine-tune
that learns only the register scores as a behavior change. The audit measures that, per split
(train, probes, contrast, dreams):

- surface rates of chosen vs rejected answers: ends with "?", contains "!", multi-line (a list
  or code), contains a digit; mean word count and the share of rows whose two answers are
  within ±30% in words;
- the most one-sided word n-grams (1-3 words, by answers containing them);
- the pairwise accuracy of a style-only classifier: word 1-3-gram counts of the answers
  alone, logistic regression (scikit-learn) fitted on train's chosen (1) and rejected (0)
  answers, scored on each held-out split as the fraction of pairs whose chosen answer gets
  the higher probability (ties count half). 0.5 is chance; near 1.0 means a style-only
  learner scores as a full behavior change.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from objectives.behavior import Behavior, normalize

SURFACE = (("ends_question", 'ends with "?"'), ("has_exclamation", 'contains "!"'),
           ("multiline", "multi-line"), ("has_digit", "contains a digit"))
#: The acceptance the shipped data is held to (tests/test_audit.py).
MAX_SURFACE_GAP = 0.15
WORD_RATIO = 0.30
TOP_NGRAMS = 15


def surface(text: str) -> dict[str, bool]:
    stripped = text.strip()
    return {"ends_question": stripped.endswith("?"), "has_exclamation": "!" in stripped,
            "multiline": "\n" in stripped, "has_digit": bool(re.search(r"\d", stripped))}


def word_count(text: str) -> int:
    return len(normalize(text).split())


@dataclass
class SplitStats:
    name: str
    rows: int
    rates: dict[str, tuple[float, float]]  # key -> (chosen, rejected)
    words: tuple[float, float]  # mean word counts (chosen, rejected)
    within_ratio: float  # share of rows whose word counts are within ±WORD_RATIO
    ngrams: list[tuple[str, int, int]] = field(default_factory=list)  # (ngram, chosen, rejected)
    kinds: dict[str, int] = field(default_factory=dict)

    def max_gap(self) -> float:
        return max(abs(c - r) for c, r in self.rates.values())


@dataclass
class AuditReport:
    behavior: str
    splits: list[SplitStats]
    classifier: dict[str, float]  # split name (and "probes+contrast") -> pairwise accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"behavior": self.behavior, "classifier": self.classifier,
                "splits": [s.__dict__ for s in self.splits]}


def _pairs(behavior: Behavior) -> dict[str, list[dict[str, Any]]]:
    splits = {"train": behavior.train_rows(), "probes": behavior.probe_rows()}
    if behavior.contrast is not None:
        splits["contrast"] = behavior.contrast_rows()
    if behavior.dreams is not None:
        splits["dreams"] = behavior.dream_rows()
    return splits


def split_stats(name: str, rows: list[dict[str, Any]]) -> SplitStats:
    n = len(rows)
    rates = {}
    for key, _ in SURFACE:
        c = sum(surface(r["chosen"])[key] for r in rows) / n
        j = sum(surface(r["rejected"])[key] for r in rows) / n
        rates[key] = (c, j)
    wc = [(word_count(r["chosen"]), word_count(r["rejected"])) for r in rows]
    within = sum(1 for c, j in wc if abs(j - c) <= WORD_RATIO * max(c, 1)) / n
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r.get("rejected_kind") or "unlabelled"] = kinds.get(r.get("rejected_kind") or
                                                                   "unlabelled", 0) + 1
    return SplitStats(name, n, rates, (sum(c for c, _ in wc) / n, sum(j for _, j in wc) / n),
                      within, one_sided_ngrams(rows), kinds)


def one_sided_ngrams(rows: list[dict[str, Any]], top: int = TOP_NGRAMS, min_rows: int = 3
                     ) -> list[tuple[str, int, int]]:
    """Word 1-3-grams ranked by how one-sided they are: |log((c + 1) / (r + 1))| over the
    numbers of chosen (c) and rejected (r) answers containing them, among n-grams in at
    least ``min_rows`` answers."""
    from sklearn.feature_extraction.text import CountVectorizer

    texts = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    vectorizer = CountVectorizer(ngram_range=(1, 3), binary=True, min_df=min_rows)
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:  # no n-gram in enough answers
        return []
    n = len(rows)
    chosen = counts[:n].sum(axis=0).A1
    rejected = counts[n:].sum(axis=0).A1
    names = vectorizer.get_feature_names_out()
    scored = sorted(range(len(names)), key=lambda i: -abs(math.log((chosen[i] + 1) /
                                                                   (rejected[i] + 1))))
    return [(str(names[i]), int(chosen[i]), int(rejected[i])) for i in scored[:top]]


def style_classifier_accuracy(train: list[dict[str, Any]], tests: dict[str, list[dict[str, Any]]]
                              ) -> dict[str, float]:
    """Pairwise accuracy, per test split, of a classifier of the answers alone fitted on train."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = [r["chosen"] for r in train] + [r["rejected"] for r in train]
    labels = [1] * len(train) + [0] * len(train)
    model = make_pipeline(CountVectorizer(ngram_range=(1, 3)),
                          LogisticRegression(max_iter=2000, random_state=0))
    model.fit(texts, labels)
    out = {}
    for name, rows in tests.items():
        if not rows:
            continue
        p_chosen = model.predict_proba([r["chosen"] for r in rows])[:, 1]
        p_rejected = model.predict_proba([r["rejected"] for r in rows])[:, 1]
        wins = sum(1.0 if c > r else 0.5 if c == r else 0.0
                   for c, r in zip(p_chosen, p_rejected, strict=True))
        out[name] = wins / len(rows)
    return out


def audit(behavior: Behavior) -> AuditReport:
    splits = _pairs(behavior)
    stats = [split_stats(name, rows) for name, rows in splits.items()]
    tests = {k: v for k, v in splits.items() if k != "train"}
    if "contrast" in tests:
        tests["probes+contrast"] = tests["probes"] + tests["contrast"]
    return AuditReport(behavior.name, stats,
                       style_classifier_accuracy(splits["train"], tests))


def format_audit(report: AuditReport) -> str:
    lines = [f"style audit of {report.behavior!r}: do the answers alone tell chosen from rejected?"]
    for s in report.splits:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s.kinds.items()))
        lines += ["", f"{s.name}: {s.rows} pairs (rejected kinds: {kinds})",
                  f"  {'':18s} {'chosen':>7s} {'rejected':>8s}  gap"]
        for key, label in SURFACE:
            c, j = s.rates[key]
            flag = "  <-- over 15 points" if abs(c - j) > MAX_SURFACE_GAP else ""
            lines.append(f"  {label:18s} {c:7.1%} {j:8.1%} {abs(c - j) * 100:4.0f}{flag}")
        lines.append(f"  {'mean words':18s} {s.words[0]:7.1f} {s.words[1]:8.1f}")
        lines.append(f"  pairs with word counts within ±30%: {s.within_ratio:.1%}")
        if s.ngrams:
            lines.append("  most one-sided n-grams (answers containing it: chosen / rejected):")
            lines += [f"    {g!r}: {c} / {r}" for g, c, r in s.ngrams]
    lines += ["", "style-only classifier (word 1-3-grams of the answers alone, fitted on train): "
              "pairwise accuracy, 0.5 = chance"]
    lines += [f"  {name:16s} {acc:.3f}" for name, acc in report.classifier.items()]
    return "\n".join(lines)
