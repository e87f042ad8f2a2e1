"""The data contract: what analysis reads from a study, and nothing else.

A study is analyzable when every COMPLETE trial has, as user attributes,

- ``n_real``, ``dream_multiplier``, ``lr``, ``batch_size``, ``epochs``, ``steps``, ``seed``
  (numbers), ``dream_strategy`` (``template`` / ``file`` / ``model`` / ``repeat``) and
  ``train_on`` (``chosen`` / ``placebo`` / ``rejected``; absent means ``chosen``);
- ``shift`` and ``forgetting`` (numbers; ``forgetting`` may be null);
- ``probe_margins``: the tuned margin of every scored probe, a list in the study's probe order;

and the study has the user attributes ``probe_ids`` (the probes' ids, in that order) and
``base_probe_margins`` (the base model's margin of each). ``n_eff`` is n_real x
dream_multiplier. A study written by other code - a researcher's own trials, a simulation -
that follows this contract is analyzable too; no trial folder or artifact is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from objectives.errors import UserError

NUMBERS = ("n_real", "dream_multiplier", "lr", "batch_size", "epochs", "steps", "seed")


@dataclass
class Trial:
    """One complete trial, as the contract stores it."""

    number: int
    n_real: int
    dream_multiplier: int
    lr: float
    batch_size: int
    epochs: int
    steps: int
    seed: int
    dream_strategy: str
    train_on: str
    shift: float
    forgetting: float | None
    margins: np.ndarray  # tuned margin per probe, in the study's probe order
    attrs: dict[str, Any] = field(default_factory=dict)  # every user attribute, as stored

    @property
    def n_eff(self) -> int:
        return self.n_real * self.dream_multiplier


@dataclass
class StudyData:
    """A study's trials and probes, read through the contract."""

    name: str
    probe_ids: list[str]
    base_margins: np.ndarray
    trials: list[Trial]
    attrs: dict[str, Any] = field(default_factory=dict)  # the study's user attributes

    def adopted(self, trial: Trial) -> int:
        """Probes with margin_tuned > 0 (the adoption count out of ``len(probe_ids)``)."""
        return int((trial.margins > 0).sum())

    def select(self, **where: Any) -> list[Trial]:
        """Trials whose attributes equal every ``where`` value (a tuple: any of them)."""
        out = []
        for t in self.trials:
            ok = all((getattr(t, k) in v) if isinstance(v, tuple) else getattr(t, k) == v
                     for k, v in where.items())
            if ok:
                out.append(t)
        return out


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def load_study_data(study: Any) -> StudyData:
    """Read ``study`` (an ``optuna.Study``) through the contract; a clear error names the
    first trial or attribute that breaks it."""
    from optuna.trial import TrialState

    name = study.study_name
    attrs = dict(study.user_attrs)
    ids, base = attrs.get("probe_ids"), attrs.get("base_probe_margins")
    if not isinstance(ids, list) or not isinstance(base, list) or len(ids) != len(base) or not ids:
        raise UserError(f"study {name!r}: needs the study user attributes probe_ids and "
                        f"base_probe_margins, lists of the same length (the data contract, README)")
    if not all(_finite(b) for b in base):
        raise UserError(f"study {name!r}: base_probe_margins must be finite numbers")
    trials = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        where = f"study {name!r} trial {t.number}"
        for key in NUMBERS:
            if not _finite(a.get(key)):
                raise UserError(f"{where}: user attribute {key!r} must be a number, got "
                                f"{a.get(key)!r} (the data contract, README)")
        margins = a.get("probe_margins")
        if not isinstance(margins, list) or len(margins) != len(ids):
            raise UserError(f"{where}: user attribute 'probe_margins' must be a list of "
                            f"{len(ids)} margins, one per probe_ids entry")
        if not all(_finite(m) for m in margins) or not _finite(a.get("shift")):
            raise UserError(f"{where}: probe_margins and shift must be finite numbers")
        trials.append(Trial(
            number=t.number, n_real=int(a["n_real"]), dream_multiplier=int(a["dream_multiplier"]),
            lr=float(a["lr"]), batch_size=int(a["batch_size"]), epochs=int(a["epochs"]),
            steps=int(a["steps"]), seed=int(a["seed"]),
            dream_strategy=str(a.get("dream_strategy", "template")),
            train_on=str(a.get("train_on") or "chosen"), shift=float(a["shift"]),
            forgetting=float(a["forgetting"]) if _finite(a.get("forgetting")) else None,
            margins=np.asarray(margins, dtype=float), attrs=dict(a)))
    return StudyData(name=name, probe_ids=[str(i) for i in ids],
                     base_margins=np.asarray(base, dtype=float), trials=trials, attrs=attrs)


def write_trial(study: Any, trial: Trial | dict[str, Any], value: float | None = None) -> None:
    """Add one complete trial to ``study`` through the contract (simulations, tests, imports
    of a researcher's own runs). ``trial`` is a :class:`Trial` or a dict of its fields."""
    import optuna

    data = trial if isinstance(trial, dict) else {
        **{k: getattr(trial, k) for k in (*NUMBERS, "dream_strategy", "train_on", "shift",
                                          "forgetting")},
        "probe_margins": [float(m) for m in trial.margins]}
    attrs = {k: v for k, v in data.items() if k != "margins"}
    if "margins" in data:
        attrs["probe_margins"] = [float(m) for m in data["margins"]]
    attrs["n_eff"] = int(attrs["n_real"]) * int(attrs["dream_multiplier"])
    dist = optuna.distributions.FloatDistribution(1e-12, 1e12, log=True)
    study.add_trial(optuna.trial.create_trial(
        params={"n_eff": float(attrs["n_eff"])}, distributions={"n_eff": dist},
        value=float(attrs["shift"] if value is None else value), user_attrs=attrs))
