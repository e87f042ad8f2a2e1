"""The one registry of measures: each measure's name, definition, direction, label and format.

Every place that lists measures reads this: the CLI table (``study.cli``), the sweep's user
attributes (``study.sweep_worker``), the objectives a search space may name
(``search_spaces``), the sweep summary and the plots (``study.plots``). ``Session.run``
computes them (``objectives.scoring``); a test checks that its record has every one. A new
measure is added here once.

Definitions follow ../shared/science.md. For a probe x with chosen y+ and rejected y-,
``margin(x)`` = mean-token log p(y+|x) - mean-token log p(y-|x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Measure:
    """One number a trial records.

    ``direction`` is what "better" means for the behavior change (None: not something to
    optimize, e.g. a base-model value or a design quantity). ``objective``: a search space
    may name it as an objective. ``base``: the measure holding the base model's value of the
    same quantity (drawn as the reference line in plots). ``summary``: shown in the sweep's
    short table of best trials.
    """

    name: str
    label: str
    fmt: str
    definition: str
    direction: Direction | None = None
    objective: bool = False
    base: str | None = None
    summary: bool = False
    #: What a trial needs for the measure to be defined (why it can be n/a).
    requires: str | None = None

    def format(self, value: float | None) -> str:
        """The value in this measure's format; n/a for an undefined one."""
        if value is None or value != value:  # None or NaN
            return "n/a"
        return self.fmt.format(value)


MEASURES: tuple[Measure, ...] = (
    Measure("n_eff", "n_eff", "{:.0f}", "n_real x dream_multiplier: effective examples",
            summary=True),
    Measure("steps", "steps", "{:.0f}", "optimizer steps: epochs x ceil(n_eff / batch_size)"),
    Measure("completion_tokens", "completion tokens", "{:.0f}",
            "completion tokens trained on over all steps (matches placebo to real trials)"),
    Measure("shift", "shift", "{:+.4f}",
            "mean over probes of margin_tuned(x) - margin_base(x)", "maximize", objective=True,
            summary=True),
    Measure("base_margin", "margin (base)", "{:+.4f}", "mean over probes of margin_base(x)"),
    Measure("margin", "margin (tuned)", "{:+.4f}", "mean over probes of margin_tuned(x)",
            "maximize", objective=True, base="base_margin"),
    Measure("base_adoption", "adoption (base)", "{:.3f}",
            "fraction of probes with margin_base(x) > 0"),
    Measure("adoption", "adoption (tuned)", "{:.3f}", "fraction of probes with margin_tuned(x) > 0",
            "maximize", objective=True, base="base_adoption", summary=True),
    Measure("flip_rate", "flip_rate", "{:.3f}",
            "among probes with margin_base(x) <= 0, the fraction with margin_tuned(x) > 0",
            "maximize", objective=True, summary=True,
            requires="a scored probe with base margin <= 0"),
    Measure("contrast_shift", "contrast_shift", "{:+.4f}",
            "shift on the contrast probes (directions that ask for the old behavior's style): "
            "a direction-follower raises it, a style-only learner lowers it",
            "maximize", objective=True, summary=True, requires="the behavior's contrast.jsonl"),
    Measure("contrast_base_adoption", "contrast adoption (base)", "{:.3f}",
            "fraction of contrast probes with margin_base(x) > 0",
            requires="the behavior's contrast.jsonl"),
    Measure("contrast_adoption", "contrast adoption (tuned)", "{:.3f}",
            "fraction of contrast probes with margin_tuned(x) > 0", "maximize", objective=True,
            base="contrast_base_adoption", requires="the behavior's contrast.jsonl"),
    Measure("train_shift", "train_shift", "{:+.4f}",
            "shift on the real training examples the trial drew (for placebo trials: the ones "
            "a chosen trial of the same seed draws)", "maximize", objective=True),
    Measure("forgetting", "forgetting", "{:.5f}",
            "mean per-token KL(p_base || p_tuned) over control texts, teacher-forced",
            "minimize", objective=True, summary=True, requires="control texts"),
    Measure("gen_base_adoption", "gen adoption (base)", "{:.3f}",
            "gen_adoption of the base model", requires="gen_probes > 0"),
    Measure("gen_adoption", "gen adoption (tuned)", "{:.3f}",
            "on a fixed subset of probes, the fraction whose greedy answer is closer to chosen "
            "than to rejected (cosine of all-MiniLM-L6-v2 sentence embeddings)", "maximize",
            objective=True, base="gen_base_adoption", requires="gen_probes > 0"),
    Measure("gen_agreement", "gen agrees with margin", "{:.3f}",
            "on the gen_adoption subset, the fraction of probes where the generation judge and "
            "margin_tuned(x) > 0 agree", requires="gen_probes > 0"),
    Measure("dream_overlap", "dream_overlap", "{:.3f}",
            "mean word Jaccard of the variations' chosen answers with their sources' "
            "(1.0 for repeat; n/a without variations)",
            requires="dream variations or copies (dream_multiplier > 1, train_on not placebo)"),
)

BY_NAME: dict[str, Measure] = {m.name: m for m in MEASURES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
#: Measures a search space may name as objectives, with their Optuna direction.
OBJECTIVES: dict[str, Direction] = {m.name: m.direction for m in MEASURES
                                    if m.objective and m.direction is not None}
#: Measures where lower is better (the colour scale of a surface of them is reversed).
MINIMIZED: frozenset[str] = frozenset(n for n, d in OBJECTIVES.items() if d == "minimize")


def get(name: str) -> Measure:
    return BY_NAME[name]
