"""``make bench``: what a sweep costs beyond training and scoring, on this machine, default model.

Prints, all measured in this one run:

1. **Fixed cost per trial in a sweep**: a study of ``--trials`` identical-cost trials (the
   same point, seeds 0..K-1) through ``shiftsweep sweep`` (one worker, one launch). For each
   trial, fixed cost = trial wall (Optuna's start to complete) - training - scoring (the
   tuned model's, and the base model's on rows not scored before, shown apart); the
   median over trials, as a fraction of the trial's wall (target <= 0.05). The worker's own
   start-up (launch, imports, model load) is shown beside it, amortized over the default
   study's trial count.
2. **The same with one ``accelerate launch`` per trial** (``shiftsweep trial`` per seed):
   launch wall - training - scoring, as a fraction of the launch wall; and the ratio.
3. **Trials per hour** of the sweep path at this point of the space.
4. **Training throughput**: tokens per second of :func:`objectives.finetune.train` against a
   bare PyTorch loop (same model, LoRA adapter, batches, loss and steps; AdamW, backward,
   step), in back-to-back A/B pairs after one uncounted warm-up run; the median of the pair
   ratios (this machine's run-to-run noise is several percent, pairs cancel its drift) and
   the ratio of the medians; target >= 0.95.
5. **Peak resident memory of the forgetting pass**: a child process per path runs the same
   sweep-like sequence of ``--trials`` trials (one Session, seeds 0..K-1, the default study's
   settings with every control text, or ``--n-control``; a one-step point and 4 probes,
   since neither is what is measured) and reports its peak RSS (``getrusage`` maxrss). "held" is the path
   before this change, kept here only for the comparison: the base model's full
   next-token distributions on the control texts computed once and held for the session, the
   tuned model's computed for every text, then the KL. "streamed" is the project's path: the
   base distributions computed batch by batch beside the tuned ones (LoRA: adapter
   disabled), never held. Both report their forgetting values, which must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

POINT = {"n_real": 8, "dream_multiplier": 4, "lr": 1e-3, "batch_size": 8}
# The memory runs: one optimizer step and a few probes; the control texts are what is measured.
MEMORY_POINT = {"n_real": 2, "dream_multiplier": 1, "lr": 1e-3, "batch_size": 2, "n_probes": 4,
                "n_contrast": 4, "n_train_scored": 2}


def _scoring_settings() -> dict[str, Any]:
    """The default study's fixed settings (same scoring subset, so the same per-trial cost)."""
    from search_spaces import DEFAULT_SPACE, load_space

    return dict(load_space(DEFAULT_SPACE).fixed)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True,
                          text=True)


def bench_sweep(work: Path, trials: int) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    import storage

    fixed = {**_scoring_settings(), **{k: v for k, v in POINT.items()}}
    fixed.pop("seed", None)
    space = {"description": "make bench: one point, seeds 0..K-1",
             "dimensions": {"seed": {"type": "categorical", "values": list(range(trials))}},
             "fixed": fixed, "sampler": {"name": "grid"}, "n_trials": trials}
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(space))
    url = f"sqlite:///{work / 'bench.db'}"
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.time()
    done = _cli("sweep", "--space", str(path), "--study", name, "--storage", url,
                "--artifacts", str(work / "artifacts"), "--no-progress")
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: the sweep failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=storage.open_storage(url))
    rows = []
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        trial_wall = (t.datetime_complete - t.datetime_start).total_seconds()
        work_s = t.user_attrs["train_s"] + t.user_attrs["score_s"] + t.user_attrs["base_score_s"]
        rows.append({"wall": trial_wall, "fixed": trial_wall - work_s,
                     "base": t.user_attrs["base_score_s"]})
    inside = sum(r["wall"] for r in rows)
    return {"rows": rows, "launch_wall": wall, "outside_trials": wall - inside}


def bench_launches(work: Path, trials: int) -> list[dict[str, float]]:
    fixed = _scoring_settings()
    sets = [f"{k}={json.dumps(v)}" for k, v in fixed.items()
            if k not in ("behavior", "model", "dream_strategy", "epochs", "seed", "finetune")]
    rows = []
    for seed in range(trials):
        out = work / f"launch-{seed}"
        args = ["trial", "--n-real", str(POINT["n_real"]), "--dream-multiplier",
                str(POINT["dream_multiplier"]), "--lr", str(POINT["lr"]), "--batch-size",
                str(POINT["batch_size"]), "--seed", str(seed), "--out", str(out)]
        for item in sets:
            args += ["--set", item]
        started = time.time()
        done = _cli(*args)
        wall = time.time() - started
        if done.returncode != 0:
            raise SystemExit(f"bench: shiftsweep trial failed:\n{done.stderr[-3000:]}")
        timings = json.loads((out / "result.json").read_text())["timings"]
        work_s = timings["train_s"] + timings["score_s"] + timings["base_score_s"]
        rows.append({"wall": wall, "fixed": wall - work_s, "base": timings["base_score_s"]})
    return rows


def bench_training(repeats: int) -> dict[str, list[float]]:
    """Tokens per second of the project's training loop and of a bare loop, A/B alternated."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    from objectives import dreams
    from objectives.behavior import load_behavior
    from objectives.config import TrialConfig
    from objectives.finetune import global_batches, train
    from objectives.models import load_model, lora_target_modules
    from objectives.tokens import collate, encode_pair
    from objectives.trial import training_examples

    config = TrialConfig.from_dict({**_scoring_settings(), **POINT})
    base, tokenizer, _ = load_model(config.model)
    behavior = load_behavior(config.behavior)
    pool = behavior.train_rows()
    if config.dream_strategy == "file":
        pool = dreams.file_sources(pool, behavior.dream_rows())
    real = dreams.select_real(pool, config.n_real, config.seed)
    rows = training_examples(
        dreams.make_training_set(real, config.dream_multiplier, config.dream_strategy,
                                 config.seed, behavior.probe_rows(), behavior.dream,
                                 written=behavior.dream_rows()), config.train_on, behavior,
        config.seed)
    accelerator = Accelerator(cpu=True)
    targets = lora_target_modules(base)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=targets, task_type="CAUSAL_LM")

    def ours(model: Any) -> tuple[float, int]:
        started = time.perf_counter()
        log = train(model, tokenizer, rows, config, accelerator)
        return time.perf_counter() - started, sum(r["tokens"] for r in log)

    def bare(model: Any) -> tuple[float, int]:
        started = time.perf_counter()
        encoded = [encode_pair(tokenizer, r["prompt"], r["completion"], config.max_length,
                               add_eos=True) for r in rows]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=config.lr)
        model.train()
        total = 0
        for batch in global_batches(len(encoded), config.batch_size, config.epochs, config.seed):
            part = [encoded[i] for i in batch]
            ids, mask, labels, positions = collate(part, tokenizer.pad_token_id, left=True)
            keep = max(len(e) - max(e.start, 1) for e in part) + 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           logits_to_keep=keep).logits
            targets = labels[:, -keep:][:, 1:]
            tokens = int((targets != -100).sum())
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(),
                                   ignore_index=-100, reduction="sum") / tokens
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += tokens
        return time.perf_counter() - started, total

    rates: dict[str, list[float]] = {"ours": [], "bare": []}
    # One uncounted run first: the first backward pass allocates and warms caches.
    schedule = [("warm-up", bare)] + [run for _ in range(repeats)
                                      for run in (("ours", ours), ("bare", bare))]
    for name, loop in schedule:
        torch.manual_seed(config.seed)
        model = get_peft_model(base, lora)
        seconds, tokens = loop(model)
        base = model.unload()
        if name in rates:
            rates[name].append(tokens / seconds)
    return rates


def _held_session_class() -> type:
    """A Session with the forgetting pass as it was before the streamed KL (see 5. above)."""
    import torch

    from objectives import Session
    from objectives.tokens import collate, encode_text
    from objectives.trial import _control_texts

    @torch.no_grad()
    def distributions(model: Any, tokenizer: Any, texts: list[str], max_length: int,
                      batch_size: int) -> list[torch.Tensor]:
        # the old scoring.control_logprobs: (len-1, vocab) per text, on the CPU
        encoded = [encode_text(tokenizer, t, max_length) for t in texts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            ids, mask, _, positions = collate([encoded[i] for i in batch], tokenizer.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).cpu()
            for row, i in enumerate(batch):
                out[i] = logp[row, : len(encoded[i]) - 1].clone()
        return out

    class HeldControlSession(Session):
        held: list[torch.Tensor] | None = None

        def _forgetting(self, model: Any, as_base: Any, behavior: Any, config: Any
                        ) -> tuple[float, int]:
            texts = _control_texts(behavior, config)
            if self.held is None:
                with as_base():
                    self.held = distributions(model, self.tokenizer, texts, config.max_length,
                                              config.score_batch_size)
            tuned = distributions(model, self.tokenizer, texts, config.max_length,
                                  config.score_batch_size)
            total, count = 0.0, 0
            for b, t in zip(self.held, tuned, strict=True):
                kl = (b.exp() * (b - t)).sum(-1)
                total += float(kl.sum())
                count += kl.numel()
            return total, count

    return HeldControlSession


def memory_child(path: str, trials: int, n_control: int | None) -> dict[str, Any]:
    """Run ``trials`` trials in this process on the ``path`` forgetting pass; peak RSS."""
    import resource

    from objectives import Session, TrialConfig

    session = _held_session_class()() if path == "held" else Session()
    settings = {**_scoring_settings(), **MEMORY_POINT, "n_control": n_control}
    forgetting = [session.run(TrialConfig.from_dict({**settings, "seed": seed}))["measures"]["forgetting"]
                  for seed in range(trials)]
    # ru_maxrss is in KiB on Linux
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "forgetting": forgetting}


def bench_memory(trials: int, n_control: int | None) -> dict[str, dict[str, Any]]:
    out = {}
    for path in ("held", "streamed"):
        args = ["--memory-child", path, "--trials", str(trials)]
        if n_control is not None:
            args += ["--n-control", str(n_control)]
        done = subprocess.run([sys.executable, "-m", "study.bench", *args], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench: the {path} memory run failed:\n{done.stderr[-3000:]}")
        out[path] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__)
    parser.add_argument("--trials", type=int, default=3, help="trials per path (median of these)")
    parser.add_argument("--repeats", type=int, default=5, help="A/B runs of each training loop")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true", help="only the training loops")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--n-control", type=int, default=None,
                        help="control texts in the memory runs (default: every one)")
    parser.add_argument("--memory-child", choices=["held", "streamed"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import study  # noqa: F401 - quiets library warnings
    from search_spaces import DEFAULT_SPACE, load_space

    n_control = args.n_control
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.trials, n_control)))
        return 0

    n_default = load_space(DEFAULT_SPACE).n_trials
    print(f"make bench: default model, listening, point {POINT} with the scoring settings of "
          f"{DEFAULT_SPACE}; {args.trials} trials per path", flush=True)
    if not args.skip_sweep:
        with tempfile.TemporaryDirectory(prefix="shiftsweep-bench-") as tmp:
            work = Path(tmp)
            sweep = bench_sweep(work, args.trials)
            launches = bench_launches(work, args.trials)
        s_wall = statistics.median(r["wall"] for r in sweep["rows"])
        s_frac = statistics.median(r["fixed"] / r["wall"] for r in sweep["rows"])
        l_frac = statistics.median(r["fixed"] / r["wall"] for r in launches)
        l_wall = statistics.median(r["wall"] for r in launches)
        startup = sweep["outside_trials"]
        amortized = statistics.median(
            (r["fixed"] + startup / n_default) / (r["wall"] + startup / n_default) for r in sweep["rows"])
        print("\n== fixed cost per trial (all but training and scoring) ==")
        for i, r in enumerate(sweep["rows"]):
            print(f"  sweep trial {i}: wall {r['wall']:.1f} s, fixed {r['fixed']:.2f} s "
                  f"(base-model scoring, not counted as fixed: {r['base']:.2f} s)")
        for i, r in enumerate(launches):
            print(f"  launch per trial {i}: wall {r['wall']:.1f} s, fixed {r['fixed']:.2f} s "
                  f"(base-model scoring, not counted as fixed: {r['base']:.2f} s)")
        print(f"  sweep (one worker):      median fixed fraction {s_frac:.4f}  (target <= 0.05)")
        print(f"    + worker start-up {startup:.1f} s amortized over {n_default} trials: "
              f"{amortized:.4f}")
        print(f"  one launch per trial:    median fixed fraction {l_frac:.4f}")
        print(f"  ratio launch/sweep:      {l_frac / s_frac:.1f}x")
        print(f"  trials per hour: sweep {3600 / s_wall:.1f}, one launch per trial {3600 / l_wall:.1f}")
    if not args.skip_training:
        rates = bench_training(args.repeats)
        ours, bare = statistics.median(rates["ours"]), statistics.median(rates["bare"])
        print("\n== training throughput (tokens/s of completion tokens) ==")
        print(f"  shiftsweep train(): {ours:.1f}  runs {[round(r, 1) for r in rates['ours']]}")
        print(f"  bare PyTorch loop:  {bare:.1f}  runs {[round(r, 1) for r in rates['bare']]}")
        pairs = [a / b for a, b in zip(rates["ours"], rates["bare"], strict=True)]
        print(f"  ratio, median of the {len(pairs)} back-to-back A/B pairs: "
              f"{statistics.median(pairs):.3f}  (target >= 0.95; pairs "
              f"{[round(p, 3) for p in pairs]})")
        print(f"  ratio of the medians: {ours / bare:.3f}")
    if not args.skip_memory:
        runs = bench_memory(args.trials, n_control)
        held, streamed = runs["held"], runs["streamed"]
        gib = 2**30
        print(f"\n== peak resident memory, {args.trials} trials in one process, "
              f"{n_control or 'every'} control text(s), point {MEMORY_POINT} ==")
        print(f"  held base distributions (before): {held['peak_bytes'] / gib:.2f} GiB")
        print(f"  streamed KL (now):                {streamed['peak_bytes'] / gib:.2f} GiB")
        print(f"  ratio before/now: {held['peak_bytes'] / streamed['peak_bytes']:.2f}x")
        gap = max(abs(a - b) for a, b in zip(held["forgetting"], streamed["forgetting"], strict=True))
        print(f"  forgetting per trial: before {[f'{v:.6f}' for v in held['forgetting']]}, "
              f"now {[f'{v:.6f}' for v in streamed['forgetting']]} (largest gap {gap:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
