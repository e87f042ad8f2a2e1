"""One trial: draw real examples, dream variations, fine-tune, score. Knows nothing of Optuna.

:class:`Session` holds what consecutive trials share - the accelerator, the loaded base model
and its cached base scores - so a worker process that runs many trials pays process start-up,
imports and model loading once. Each trial attaches a fresh LoRA adapter (or, for full
fine-tuning, snapshots the weights) and removes it (restores them) afterwards, so every trial
starts from the same base model. ``Session.run`` is the one entry point: a resolved
:class:`TrialConfig` in, a result dict of measures out. It raises on failure; it never
returns a made-up score.

Under ``accelerate launch`` with several processes every process calls ``run`` with the same
config: training is data-parallel and scoring splits the rows over the processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from objectives import dreams, scoring
from objectives.behavior import Behavior, load_behavior
from objectives.config import TrialConfig
from objectives.errors import UserError
from objectives.finetune import train
from objectives.models import fingerprint, load_model, lora_target_modules
from objectives.tokens import render_prompt

log = logging.getLogger("shiftsweep")

PARAPHRASE_INSTRUCTION = (
    "Rewrite the following text in your own words. Keep its meaning, every instruction and "
    "every concrete detail. Reply with the rewritten text only.\n\n{text}")


class Session:
    """Base model, tokenizer and cached base scores, shared by the trials of one process."""

    def __init__(self, accelerator: Any | None = None) -> None:
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator()
        self.accelerator = accelerator
        self.model: Any = None
        self.tokenizer: Any = None
        self.model_spec: str | None = None
        self.model_name: str = ""
        self.model_fingerprint: str = ""
        self._behaviors: dict[str, Behavior] = {}
        self._base: dict[str, dict[str, Any]] = {}
        self._generators: dict[str, tuple[Any, Any]] = {}

    # --- the one entry point -----------------------------------------------------------------
    def run(self, config: TrialConfig) -> dict[str, Any]:
        """Run one trial; returns measures, per-probe margins, the training log and timings."""
        acc = self.accelerator
        if config.mixed_precision != acc.mixed_precision:
            raise UserError(f"mixed_precision: the trial asks for {config.mixed_precision!r} but "
                            f"this process was launched with {acc.mixed_precision!r}")
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - clock
            clock = now

        self._ensure_model(config.model)
        lap("model_load_s")
        behavior = self._behavior(config.behavior)
        pool = behavior.train_rows()
        real = dreams.select_real(pool, config.n_real, config.seed)
        lap("data_s")
        probes = _fixed_subset(behavior.probe_rows(), config.n_probes, "probes")
        scored_real = real[:config.n_train_scored]
        base_probe = self._base_margins(behavior, config, "probe", probes)
        base_train = self._base_margins(behavior, config, "train", scored_real)
        base_control = self._base_control(behavior, config)
        lap("base_score_s")
        rows = self._training_set(real, behavior, config)
        lap("data_s")

        from accelerate.utils import set_seed

        set_seed(config.seed)
        with self._trainable(config) as trainable:
            lap("train_s")
            log.info("training: %d examples, %d steps", len(rows), config.steps)
            steps = train(trainable, self.tokenizer, rows, config, acc)
            lap("train_s")
            log.info("scoring %d probes, %d trained examples, %d control texts", len(probes),
                     len(scored_real), len(_control_texts(behavior, config)))
            trainable.eval()
            tuned_probe = self._margins(trainable, probes, config)
            tuned_train = self._margins(trainable, scored_real, config)
            kl_total, kl_count = self._forgetting(trainable, behavior, base_control, config)
            lap("score_s")
        lap("train_s")  # removing the adapter / restoring weights

        measures = scoring.summarize(base_probe, tuned_probe, base_train, tuned_train,
                                     kl_total, kl_count)
        measures.update(n_real=config.n_real, dream_multiplier=config.dream_multiplier,
                        n_eff=config.n_eff, steps=len(steps))
        if len(steps) != config.steps:
            raise RuntimeError(f"ran {len(steps)} optimizer steps, expected {config.steps}")
        return {
            "measures": measures,
            "probes": [{"scenario": p["scenario"], "line": p["line"], "base_margin": b, "margin": t}
                       for p, b, t in zip(probes, base_probe, tuned_probe, strict=True)],
            "train_examples": [{"scenario": r["scenario"], "line": r["line"], "base_margin": b,
                                "margin": t}
                               for r, b, t in zip(scored_real, base_train, tuned_train,
                                                  strict=True)],
            "training_set": {kind: sum(1 for r in rows if r["kind"] == kind)
                             for kind in ("real", "variation", "copy")},
            "log": steps,
            "timings": timings,
            "model": {"spec": config.model, "resolved": self.model_name,
                      "fingerprint": self.model_fingerprint},
            "behavior": {"name": behavior.name, "folder": str(behavior.folder),
                         "fingerprint": behavior.fingerprint, "probes": len(probes),
                         "control": len(_control_texts(behavior, config)), "pool": len(pool)},
            "processes": self.accelerator.num_processes,
        }

    def base_probe_margins(self, config: TrialConfig) -> tuple[list[dict[str, Any]], list[float]]:
        """The base model's margin on each probe of ``config.behavior`` (cached like a trial's)."""
        self._ensure_model(config.model)
        behavior = self._behavior(config.behavior)
        probes = _fixed_subset(behavior.probe_rows(), config.n_probes, "probes")
        return probes, self._base_margins(behavior, config, "probe", probes)

    # --- model and adapter ----------------------------------------------------------------------
    def _ensure_model(self, spec: str) -> None:
        if self.model_spec == spec:
            return
        self.model = self.tokenizer = None
        log.info("loading model %s", spec)
        model, tokenizer, name = load_model(spec)
        self.model = model.to(self.accelerator.device)
        self.tokenizer, self.model_name, self.model_spec = tokenizer, name, spec
        self.model_fingerprint = fingerprint(self.model)
        self._base.clear()

    @contextmanager
    def _trainable(self, config: TrialConfig):
        """The model to train for this trial; on exit the base model is as it was."""
        if config.finetune == "full":
            # kept in host memory: a second copy of the weights on the GPU could not fit
            snapshot = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.model.requires_grad_(True)
            try:
                yield self.model
            finally:
                self.model.load_state_dict(snapshot)
                self.model.requires_grad_(False)
                self.model.eval()
            return
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules or lora_target_modules(self.model)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=targets,
                          task_type="CAUSAL_LM")
        try:
            peft_model = get_peft_model(self.model, lora)
        except ValueError as err:
            raise UserError(f"lora_target_modules {targets}: {err}") from None
        try:
            yield peft_model
        finally:
            # unload() takes the LoRA layers out again without merging them.
            self.model = peft_model.unload()
            self.model.requires_grad_(False)
            self.model.eval()

    # --- behaviors and the base model's scores --------------------------------------------------
    def _behavior(self, spec: str) -> Behavior:
        if spec not in self._behaviors:
            self._behaviors[spec] = load_behavior(spec)
        return self._behaviors[spec]

    def _cache_key(self, behavior: Behavior, config: TrialConfig) -> str:
        """Base scores depend on the model, the behavior's files and how text is scored."""
        return hashlib.sha256(json.dumps([
            self.model_fingerprint, behavior.fingerprint, config.max_length,
            config.mixed_precision, getattr(self.tokenizer, "chat_template", None) or "",
            len(self.tokenizer)]).encode()).hexdigest()[:20]

    def _margins(self, model: Any, rows: list[dict[str, Any]], config: TrialConfig) -> list[float]:
        return self._sharded(rows, lambda part: scoring.margins(
            model, self.tokenizer, part, config.max_length, config.score_batch_size,
            self.accelerator.autocast))

    def _base_margins(self, behavior: Behavior, config: TrialConfig, kind: str,
                      rows: list[dict[str, Any]]) -> list[float]:
        """The base model's margins on ``rows`` (probes or train rows), each computed once per
        (model, behavior, scoring settings) and kept on disk under storage/cache/base/."""
        import storage

        key = self._cache_key(behavior, config)
        path = storage.cache_dir() / "base" / f"{key}.json"
        cache = self._base.setdefault(key, {"probe": {}, "train": {}})
        missing = [r for r in rows if str(r["line"]) not in cache[kind]]
        if missing:
            on_disk = self._broadcast(_read_json(path) if self.accelerator.is_main_process else None)
            for k in ("probe", "train"):
                stored = on_disk.get(k) if isinstance(on_disk, dict) else None
                cache[k].update(stored if isinstance(stored, dict) else {})
            missing = [r for r in rows if str(r["line"]) not in cache[kind]]
        if missing:
            log.info("scoring the base model on %d %s rows (cached afterwards)", len(missing), kind)
            self.model.eval()
            values = self._margins(self.model, missing, config)
            cache[kind].update((str(r["line"]), v) for r, v in zip(missing, values, strict=True))
            if self.accelerator.is_main_process:
                _write_json(path, cache)
        return [cache[kind][str(r["line"])] for r in rows]

    def _base_control(self, behavior: Behavior, config: TrialConfig) -> dict[str, Any]:
        """The base model's next-token distributions on this process's share of the control
        texts, kept in memory (hundreds of MB: full vocabularies, too large for disk)."""
        key = f"control:{config.n_control}:" + self._cache_key(behavior, config)
        if key not in self._base:
            texts = _control_texts(behavior, config)
            mine = list(range(self.accelerator.process_index, len(texts),
                              self.accelerator.num_processes))
            self.model.eval()
            logps = scoring.control_logprobs(self.model, self.tokenizer, [texts[i] for i in mine],
                                             config.max_length, config.score_batch_size,
                                             self.accelerator.autocast)
            self._base[key] = {"index": mine, "logprobs": logps}
        return self._base[key]

    def _forgetting(self, model: Any, behavior: Behavior, base: dict[str, Any],
                    config: TrialConfig) -> tuple[float, int]:
        texts = _control_texts(behavior, config)
        tuned = scoring.control_logprobs(model, self.tokenizer, [texts[i] for i in base["index"]],
                                         config.max_length, config.score_batch_size,
                                         self.accelerator.autocast)
        parts = self._gather([scoring.kl_sums(base["logprobs"], tuned)])
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    # --- dream variations -----------------------------------------------------------------------
    def _training_set(self, real: list[dict[str, Any]], behavior: Behavior,
                      config: TrialConfig) -> list[dict[str, Any]]:
        probes = behavior.probe_rows()
        if config.dream_strategy != "model" or config.dream_multiplier == 1:
            return dreams.make_training_set(real, config.dream_multiplier, config.dream_strategy,
                                            config.seed, probes, behavior.dream)
        # Sampling runs on the main process only; every process trains on the same rows.
        rows = None
        if self.accelerator.is_main_process:
            rows = dreams.make_training_set(real, config.dream_multiplier, "model", config.seed,
                                            probes, behavior.dream, self._paraphraser(config))
        return self._broadcast(rows)

    def _paraphraser(self, config: TrialConfig) -> Callable[[list[str], int], list[str | None]]:
        if config.dream_model is None:
            model, tokenizer = self.model, self.tokenizer
        else:
            if config.dream_model not in self._generators:
                gen, tok, _ = load_model(config.dream_model)
                self._generators[config.dream_model] = (gen.to(self.accelerator.device), tok)
            model, tokenizer = self._generators[config.dream_model]

        @torch.no_grad()
        def paraphrase(texts: list[str], seed: int) -> list[str | None]:
            torch.manual_seed(seed)
            model.eval()
            out: list[str | None] = []
            for start in range(0, len(texts), config.score_batch_size):
                chunk = texts[start:start + config.score_batch_size]
                prompts = [render_prompt(tokenizer, [{"role": "user", "content":
                                                      PARAPHRASE_INSTRUCTION.format(text=t)}])
                           for t in chunk]
                width = max(len(p) for p in prompts)
                pad = tokenizer.pad_token_id
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
                longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chunk)
                generated = model.generate(
                    input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                    do_sample=True, temperature=config.dream_temperature, top_p=0.95,
                    max_new_tokens=min(config.max_length, int(longest * 1.6) + 16),
                    pad_token_id=pad)
                for row in generated[:, width:]:
                    text = tokenizer.decode(row, skip_special_tokens=True).strip()
                    out.append(text or None)
            return out

        return paraphrase

    # --- splitting work over processes ----------------------------------------------------------
    def _sharded(self, items: list[Any], fn: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """Apply ``fn`` to this process's share of ``items``; gather all shares in order."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if world == 1:
            return fn(items)
        mine = list(range(rank, len(items), world))
        values = fn([items[i] for i in mine]) if mine else []
        out: list[Any] = [None] * len(items)
        for index, part in self._gather([(mine, values)]):
            for i, value in zip(index, part, strict=True):
                out[i] = value
        return out

    def _gather(self, objects: list[Any]) -> list[Any]:
        if self.accelerator.num_processes == 1:
            return objects
        from accelerate.utils import gather_object

        return gather_object(objects)

    def _broadcast(self, value: Any) -> Any:
        if self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _fixed_subset(items: list[Any], n: int | None, salt: str) -> list[Any]:
    """Every item, or the first n of one fixed shuffle: the same subset in every trial."""
    if n is None or n >= len(items):
        return items
    order = list(range(len(items)))
    random.Random(salt).shuffle(order)
    return [items[i] for i in sorted(order[:n])]


def _control_texts(behavior: Behavior, config: TrialConfig) -> list[str]:
    return _fixed_subset(behavior.control_texts(), config.n_control, "control")


def run_trial(config: TrialConfig, session: Session | None = None) -> dict[str, Any]:
    """Run one trial in this process (a new session unless one is given)."""
    return (session or Session()).run(config)
