"""One trial: draw real examples, dream variations, fine-tune, score. Knows nothing of Optuna.

:class:`Session` holds what consecutive trials share - the accelerator, the loaded base model
and its cached base margins - so a worker process that runs many trials pays process start-up,
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
import math
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from objectives import dreams, faults, ranks, scoring
from objectives.behavior import Behavior, load_behavior
from objectives.config import TrialConfig
from objectives.errors import UserError
from objectives.finetune import train
from objectives.models import fingerprint, load_model, lora_target_modules
from objectives.records import write_json
from objectives.tokens import generate

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
        self._generator_fingerprints: dict[str, str] = {}  # hashing the weights takes ~0.4 s
        self._dream_counts: dict[str, int] = {}

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

        if config.gen_probes:  # fail on every rank before training, not on some mid-scoring
            from objectives.judge import _encoder

            _encoder()
        self._ensure_model(config.model)
        lap("model_load_s")
        faults.inject("data", acc.process_index)
        behavior = self._behavior(config.behavior)
        real = dreams.select_real(self._real_pool(behavior, config), config.n_real, config.seed)
        lap("data_s")
        probes = _fixed_subset(behavior.probe_rows(), config.n_probes, "probes")
        contrast = _fixed_subset(behavior.contrast_rows(), config.n_contrast, "contrast")
        gen_rows = _fixed_subset(probes, config.gen_probes, "gen") if config.gen_probes else []
        scored_real = real[:config.n_train_scored]
        base_probe = self._base_margins(behavior, config, "probe", probes)
        base_contrast = self._base_margins(behavior, config, "contrast", contrast)
        base_train = self._base_margins(behavior, config, "train", scored_real)
        base_gen = self._base_generations(behavior, config, gen_rows)
        lap("base_score_s")
        if config.train_on == "placebo":
            # Only the count matters: n_eff placebo examples; no variation is built or used.
            rows = [dict(r, origin=i, kind="real") for i, r in enumerate(real)]
            self._dream_counts = {}
            examples = training_examples([{}] * config.n_eff, "placebo", behavior, config.seed)
        else:
            rows = self._training_set(real, behavior, config)
            examples = training_examples(rows, config.train_on, behavior, config.seed)
        lap("data_s")

        from accelerate.utils import set_seed

        set_seed(config.seed)
        with self._trainable(config) as (trainable, as_base):
            lap("train_s")
            log.info("training on %s: %d examples, %d steps", config.train_on, len(examples),
                     config.steps)
            steps = train(trainable, self.tokenizer, examples, config, acc)
            lap("train_s")
            log.info("scoring %d probes, %d contrast probes, %d trained examples, %d control "
                     "texts", len(probes), len(contrast), len(scored_real),
                     len(_control_texts(behavior, config)))
            trainable.eval()
            faults.inject("score", acc.process_index)
            tuned_probe = self._margins(trainable, probes, config)
            tuned_contrast = self._margins(trainable, contrast, config)
            tuned_train = self._margins(trainable, scored_real, config)
            kl_total, kl_count = self._forgetting(trainable, as_base, behavior, config)
            tuned_gen = self._generations(trainable, gen_rows, config)
            lap("score_s")
        lap("train_s")  # removing the adapter / restoring weights

        measures = scoring.summarize(base_probe, tuned_probe, base_train, tuned_train,
                                     kl_total, kl_count)
        measures.update(scoring.contrast_measures(base_contrast, tuned_contrast))
        measures.update(scoring.generation_measures(base_gen, tuned_gen, gen_rows, probes,
                                                    tuned_probe))
        measures.update(n_real=config.n_real, dream_multiplier=config.dream_multiplier,
                        n_eff=config.n_eff, steps=len(steps),
                        completion_tokens=sum(s["tokens"] for s in steps),
                        dream_overlap=_or_nan(None if config.train_on == "placebo"
                                              else dreams.dream_overlap(rows)))
        if len(steps) != config.steps:
            raise RuntimeError(f"ran {len(steps)} optimizer steps, expected {config.steps}")

        def per_row(items: list[dict[str, Any]], base: list[float], tuned: list[float]
                    ) -> list[dict[str, Any]]:
            return [{"id": r["id"], "scenario": r["scenario"], "line": r["line"],
                     "base_margin": b, "margin": t}
                    for r, b, t in zip(items, base, tuned, strict=True)]

        kinds = ("real", "variation", "copy")
        return {
            "measures": measures,
            "probes": per_row(probes, base_probe, tuned_probe),
            "contrast": per_row(contrast, base_contrast, tuned_contrast),
            "train_examples": per_row(scored_real, base_train, tuned_train),
            "generations": [{"id": r["id"], "base": b, "tuned": t}
                            for r, b, t in zip(gen_rows, base_gen, tuned_gen, strict=True)],
            "training_set": {
                "train_on": config.train_on, "examples": len(examples),
                **{kind: sum(1 for r in rows if r["kind"] == kind) if config.train_on != "placebo"
                   else 0 for kind in kinds},
                "placebo_distinct": len({e["id"] for e in examples})
                if config.train_on == "placebo" else None,
                "dream_generated": self._dream_counts.get("generated"),
                "dream_reused": self._dream_counts.get("reused"),
                "real_ids": [r["id"] for r in real]},
            "log": steps,
            "timings": timings,
            "model": {"spec": config.model, "resolved": self.model_name,
                      "fingerprint": self.model_fingerprint},
            "behavior": {"name": behavior.name, "folder": str(behavior.folder),
                         "fingerprint": behavior.fingerprint, "probes": len(probes),
                         "contrast": len(contrast),
                         "control": len(_control_texts(behavior, config)),
                         "pool": len(self._real_pool(behavior, config))},
            "processes": self.accelerator.num_processes,
        }

    def base_probe_margins(self, config: TrialConfig, kind: str = "probes"
                           ) -> tuple[list[dict[str, Any]], list[float]]:
        """The base model's margin on each probe (``kind`` "probes") or contrast probe
        ("contrast") of ``config.behavior``, the subset a trial scores (cached like a trial's)."""
        self._ensure_model(config.model)
        behavior = self._behavior(config.behavior)
        if kind == "contrast":
            rows = _fixed_subset(behavior.contrast_rows(), config.n_contrast, "contrast")
            return rows, self._base_margins(behavior, config, "contrast", rows)
        probes = _fixed_subset(behavior.probe_rows(), config.n_probes, "probes")
        return probes, self._base_margins(behavior, config, "probe", probes)

    # --- model and adapter ----------------------------------------------------------------------
    def _ensure_model(self, spec: str) -> None:
        if self.model_spec == spec and self.model is not None:
            return
        # The old weights go first (two models at once may not fit on a GPU), and until the
        # new one is in place no model counts as loaded: a failed load is retried by the next
        # trial that asks for any model, instead of leaving model=None under the old spec.
        self.model = self.tokenizer = self.model_spec = None
        self.model_name = self.model_fingerprint = ""
        self._base.clear()
        log.info("loading model %s", spec)
        model, tokenizer, name = load_model(spec)
        model = model.to(self.accelerator.device)
        self.model_fingerprint = fingerprint(model)
        self.model, self.tokenizer, self.model_name, self.model_spec = model, tokenizer, name, spec

    @contextmanager
    def _trainable(self, config: TrialConfig):
        """The model to train for this trial, and a context factory under which that model
        computes the base model's outputs (the forgetting pass); on exit the base model is
        as it was."""
        if config.finetune == "full":
            # kept in host memory: a second copy of the weights on the GPU could not fit
            # while training (gradients and optimizer state take three more)
            snapshot = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.model.requires_grad_(True)
            on_device: dict[str, torch.Tensor] = {}
            try:
                yield self.model, self._swapped_in(snapshot, on_device)
            finally:
                on_device.clear()  # the base weights' device copy, if one was made
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
        except BaseException:
            # e.g. out of memory halfway through wrapping the layers: the base model may hold
            # some LoRA layers now, so the next trial loads it afresh
            self.model = self.model_spec = None
            raise
        try:
            # the base model is the tuned one with its adapter off: nothing to keep
            yield peft_model, peft_model.disable_adapter
        finally:
            # unload() takes the LoRA layers out again without merging them.
            self.model = peft_model.unload()
            self.model.requires_grad_(False)
            self.model.eval()

    def _swapped_in(self, snapshot: dict[str, torch.Tensor], on_device: dict[str, torch.Tensor]
                    ) -> Callable[[], Any]:
        """For full fine-tuning: a context factory that points the model's parameters at the
        base weights of ``snapshot`` and back. No copy on the CPU; on a GPU one copy, kept in
        ``on_device`` from first use to the trial's end (training has freed its gradients and
        optimizer state by then, three times the weights)."""

        @contextmanager
        def base_weights():
            params = dict(self.model.named_parameters())  # a tied weight once: swapped once
            if not on_device:
                on_device.update((n, snapshot[n].to(p.device)) for n, p in params.items())
            tuned = {n: p.data for n, p in params.items()}
            try:
                for n, p in params.items():
                    p.data = on_device[n]
                yield
            finally:
                for n, p in params.items():
                    p.data = tuned[n]

        return base_weights

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
                      rows: list[dict[str, Any]],
                      compute: Callable[[list[dict[str, Any]]], list[Any]] | None = None
                      ) -> list[Any]:
        """The base model's margins on ``rows`` (probes, contrast or train rows), each computed
        once per (model, behavior, scoring settings) and kept on disk under storage/cache/base/.
        ``compute`` replaces the margin for other per-row base values (generations)."""
        import storage

        key = self._cache_key(behavior, config)
        path = storage.cache_dir() / "base" / f"{key}.json"
        cache = self._base.setdefault(key, {})
        cache.setdefault(kind, {})
        missing = [r for r in rows if str(r["line"]) not in cache[kind]]
        if missing:
            on_disk = self._broadcast(_read_json(path) if self.accelerator.is_main_process else None)
            for k, stored in (on_disk.items() if isinstance(on_disk, dict) else ()):
                if isinstance(stored, dict):
                    cache.setdefault(k, {}).update(stored)
            missing = [r for r in rows if str(r["line"]) not in cache[kind]]
        if missing:
            log.info("scoring the base model on %d %s rows (cached afterwards)", len(missing), kind)
            self.model.eval()
            values = (compute or (lambda part: self._margins(self.model, part, config)))(missing)
            cache[kind].update((str(r["line"]), v) for r, v in zip(missing, values, strict=True))
            if self.accelerator.is_main_process:
                write_json(path, cache)
        return [cache[kind][str(r["line"])] for r in rows]

    def _forgetting(self, model: Any, as_base: Callable[[], Any], behavior: Behavior,
                    config: TrialConfig) -> tuple[float, int]:
        """KL sums of this process's share of the control texts, gathered over processes;
        the base distributions are computed batch by batch beside the tuned ones (``as_base``),
        never held."""
        texts = _control_texts(behavior, config)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        parts = self._gather([scoring.control_kl(
            model, as_base, self.tokenizer, texts[rank::world], config.max_length,
            config.score_batch_size, self.accelerator.autocast)])
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    # --- the generation check -------------------------------------------------------------------
    def _generations(self, model: Any, rows: list[dict[str, Any]], config: TrialConfig
                     ) -> list[dict[str, Any]]:
        """Greedy answers to ``rows``, judged against their chosen and rejected answers."""
        if not rows:
            return []
        from objectives.judge import judge

        def run(part: list[dict[str, Any]]) -> list[dict[str, Any]]:
            answers = generate(model, self.tokenizer, [r["prompt"] for r in part],
                               config.gen_max_new_tokens, config.score_batch_size)
            return judge(answers, [r["chosen"] for r in part], [r["rejected"] for r in part])

        return self._sharded(rows, run)

    def _base_generations(self, behavior: Behavior, config: TrialConfig,
                          rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The base model's judged generations (cached on disk like its margins)."""
        if not rows:
            return []
        return self._base_margins(behavior, config,
                                  f"gen{config.gen_max_new_tokens}:{config.score_batch_size}", rows,
                                  lambda part: self._generations(self.model, part, config))

    # --- dream variations -----------------------------------------------------------------------
    def _real_pool(self, behavior: Behavior, config: TrialConfig) -> list[dict[str, Any]]:
        """Where real examples are drawn from (``real_pool``): train, or the train rows that
        have written variations, so that every m and every strategy draws the same ones."""
        return real_pool(behavior, config)

    def _training_set(self, real: list[dict[str, Any]], behavior: Behavior,
                      config: TrialConfig) -> list[dict[str, Any]]:
        probes = behavior.probe_rows() + behavior.contrast_rows()
        self._dream_counts = {}
        if config.dream_strategy != "model" or config.dream_multiplier == 1:
            return dreams.make_training_set(real, config.dream_multiplier, config.dream_strategy,
                                            config.seed, probes, behavior.dream,
                                            written=behavior.dream_rows())
        # Sampling runs on the main process only; every process trains on the same rows.
        # A failure there reaches every rank (objectives.ranks), so all fail the trial together
        # instead of the others reading rank 0's next message as the rows.
        out: tuple[Any, Any] = (None, None)
        error: BaseException | None = None
        if self.accelerator.is_main_process:
            import storage

            try:
                cache = dreams.DreamCache(
                    storage.cache_dir() / "dreams", self._generator_fingerprint(config),
                    config.seed, json.dumps([config.dream_temperature, PARAPHRASE_INSTRUCTION,
                                             config.max_length]))
                rows = dreams.make_training_set(real, config.dream_multiplier, "model",
                                                config.seed, probes, behavior.dream,
                                                self._paraphraser(config), cache=cache)
                out = (rows, {"generated": cache.generated, "reused": cache.reused})
            except Exception as err:
                error = err
        rows, counts = self._broadcast(out, error)
        self._dream_counts = counts
        return rows

    def _generator_fingerprint(self, config: TrialConfig) -> str:
        if config.dream_model is None:
            return self.model_fingerprint
        if config.dream_model not in self._generator_fingerprints:
            self._paraphraser(config)  # loads the generator
            self._generator_fingerprints[config.dream_model] = fingerprint(
                self._generators[config.dream_model][0])
        return self._generator_fingerprints[config.dream_model]

    def _paraphraser(self, config: TrialConfig) -> Callable[[list[str], int], list[str | None]]:
        if config.dream_model is None:
            model, tokenizer = self.model, self.tokenizer
        else:
            if config.dream_model not in self._generators:
                gen, tok, _ = load_model(config.dream_model)
                self._generators[config.dream_model] = (gen.to(self.accelerator.device), tok)
            model, tokenizer = self._generators[config.dream_model]

        def paraphrase(texts: list[str], seed: int) -> list[str | None]:
            torch.manual_seed(seed)
            out: list[str | None] = []
            for start in range(0, len(texts), config.score_batch_size):
                chunk = texts[start:start + config.score_batch_size]
                longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chunk)
                answers = generate(
                    model, tokenizer, [[{"role": "user", "content":
                                         PARAPHRASE_INSTRUCTION.format(text=t)}] for t in chunk],
                    min(config.max_length, int(longest * 1.6) + 16), len(chunk),
                    sample={"temperature": config.dream_temperature, "top_p": 0.95})
                out += [a or None for a in answers]
            return out

        return paraphrase

    # --- splitting work over processes ----------------------------------------------------------
    def _sharded(self, items: list[Any], fn: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """Apply ``fn`` to this process's share of ``items``; gather all shares in order.

        A share that fails is sent as a failure, so every process fails together
        (:mod:`objectives.ranks`)."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if world == 1:
            return fn(items)
        mine = list(range(rank, len(items), world))
        try:
            values, error = (fn([items[i] for i in mine]) if mine else []), None
        except Exception as err:
            values, error = [], err
        out: list[Any] = [None] * len(items)
        for index, part in ranks.exchange(self.accelerator, (mine, values), error):
            for i, value in zip(index, part, strict=True):
                out[i] = value
        return out

    def _gather(self, objects: list[Any]) -> list[Any]:
        """Every process's ``objects``, concatenated in rank order."""
        return [o for part in ranks.exchange(self.accelerator, objects) for o in part]

    def _broadcast(self, value: Any, error: BaseException | None = None) -> Any:
        """The main process's ``value`` on every process; ``error``: the main process failed
        making it, and every process raises."""
        return ranks.exchange(self.accelerator, value, error)[0]


def real_pool(behavior: Behavior, config: TrialConfig) -> list[dict[str, Any]]:
    """The rows ``config`` draws its real examples from; a clear error when too few."""
    pool = behavior.train_rows()
    sources = config.real_pool == "sources" or (config.real_pool == "auto"
                                                and config.dream_strategy == "file")
    if not sources:
        return pool
    dreams_file = behavior.folder / "dreams.jsonl"
    if behavior.dreams is None:
        raise UserError(f"dream_strategy file / real_pool sources: {dreams_file} is missing")
    rows = dreams.file_sources(pool, behavior.dream_rows())
    if config.n_real > len(rows):
        raise UserError(f"--n-real {config.n_real}: {dreams_file} has variations of only "
                        f"{len(rows)} train rows (file dreams and real_pool sources draw real "
                        f"examples from those)")
    return rows


def training_examples(rows: list[dict[str, Any]], train_on: str, behavior: Behavior,
                      seed: int) -> list[dict[str, Any]]:
    """What the fine-tune trains on: ``{"id", "prompt", "completion"}`` per example.

    ``chosen`` / ``rejected``: that side of each training row (real examples and their
    variations). ``placebo``: as many behavior-neutral examples from placebo.jsonl - the first
    len(rows) of a seeded permutation, so a larger trial contains a smaller one; the pool is
    cycled when a trial needs more examples than it holds.
    """
    if train_on in ("chosen", "rejected"):
        return [{"id": r.get("id", ""), "prompt": r["prompt"], "completion": r[train_on]}
                for r in rows]
    pool = behavior.placebo_rows()
    if not pool:
        raise UserError(f"train_on placebo: {behavior.folder / 'placebo.jsonl'} is missing")
    order = list(range(len(pool)))
    random.Random(f"placebo:{seed}").shuffle(order)
    return [{"id": pool[order[k % len(pool)]]["id"], "prompt": pool[order[k % len(pool)]]["prompt"],
             "completion": pool[order[k % len(pool)]]["completion"]} for k in range(len(rows))]


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
