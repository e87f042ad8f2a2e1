"""``shiftsweep icl``: the in-context baseline, stored as its own Optuna study.

    shiftsweep icl --k 0,1,3,5,8,16 --seeds 0 1 2 [--behavior listening] [--model default]

Every (k, seed) pair is one COMPLETE trial (params ``{"k": k}``, value = shift) that follows
the data contract of ``study.analysis.data`` as far as it applies to a run without training:
``n_real`` = n_eff = k, ``dream_multiplier`` 1, ``lr`` = ``batch_size`` = ``epochs`` =
``steps`` = 0, ``dream_strategy`` "none", ``train_on`` "icl", ``kind`` "icl", ``forgetting``
null (no weights change: there is nothing to forget), ``probe_margins``, ``shift``,
``adoption``. The study stores ``probe_ids``, ``base_probe_margins`` (the k = 0 margins) and
``kind`` "icl". A rerun skips the pairs already complete; the model is loaded once, in this
process, and only when something is left to score.

The demos are the real examples a fine-tune of n_real = k with the same seed trains on:
``--pool file`` (the default when the behavior has dreams.jsonl, as the shipped spaces use
dream_strategy file) draws from the train rows that have written variations, ``--pool train``
from all of train.jsonl (template, model and repeat dreams).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from objectives.config import TrialConfig
from objectives.errors import UserError
from objectives.records import plain

DEFAULT_K = "0,1,3,5,8,16"
# Tokens per scoring batch: what a trial's scoring holds (16 sequences of 384); longer
# in-context prompts get proportionally smaller batches, so memory stays put as k grows.
TOKEN_BUDGET = 16 * 384
BASE_TOLERANCE = 1e-3  # recomputed k = 0 margins may differ from stored ones by this (devices)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``icl`` subcommand's flags."""
    defaults = TrialConfig()
    parser.add_argument("--k", default=DEFAULT_K,
                        help=f"in-context example counts, a comma list of integers >= 0 "
                             f"(default {DEFAULT_K})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the nested draw of real examples (default 0 1 2)")
    parser.add_argument("--behavior", default=defaults.behavior,
                        help="a built-in behavior (listening) or a behavior folder")
    parser.add_argument("--model", default=defaults.model,
                        help="'default' (SmolLM2-135M-Instruct), a model folder or a cached hub id")
    parser.add_argument("--n-probes", type=int, default=None,
                        help="score this fixed subset of probes, the one trials with n_probes N "
                             "score (default: every probe)")
    parser.add_argument("--pool", default="auto", choices=["auto", "file", "train"],
                        help="where demos are drawn from, as a fine-tune's real examples are: "
                             "file (train rows with written dreams), train (all of train.jsonl); "
                             "auto: file when the behavior has dreams.jsonl")
    parser.add_argument("--study", default=None, help="study name (default: <behavior>-icl)")
    parser.add_argument("--storage", default=None,
                        help="sqlite:///FILE, postgresql://..., mysql://..., journal:FILE "
                             "(default: SQLite under storage/)")
    parser.add_argument("--batch-size", type=int, default=defaults.score_batch_size,
                        help="sequences per scoring batch at most (fewer for long prompts)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def parse_ks(text: str) -> list[int]:
    """``"0,1,3"`` -> [0, 1, 3] (sorted, without repeats); a clear error otherwise."""
    out = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise UserError(f"--k {text}: expected a comma list of integers >= 0, e.g. "
                            f"{DEFAULT_K}") from None
        if value < 0:
            raise UserError(f"--k {text}: {value} is negative (expected integers >= 0)")
        out.add(value)
    return sorted(out)


def real_pool(behavior: Any, pool: str) -> tuple[list[dict[str, Any]], str]:
    """The rows demos are drawn from, and which pool that is ("file" or "train")."""
    from objectives import dreams

    if pool == "auto":
        pool = "file" if behavior.dreams is not None else "train"
    if pool == "train":
        return behavior.train_rows(), pool
    if behavior.dreams is None:
        raise UserError(f"--pool file: {behavior.folder / 'dreams.jsonl'} is missing")
    return dreams.file_sources(behavior.train_rows(), behavior.dream_rows()), pool


def trial_attrs(k: int, seed: int, base: list[float], tuned: list[float], demos: list[dict[str, Any]],
                max_length: int, pool: str) -> dict[str, Any]:
    """One (k, seed) result as the data contract's user attributes."""
    n = len(base)
    below = [i for i in range(n) if base[i] <= 0]
    return {
        "kind": "icl", "k": k, "n_real": k, "dream_multiplier": 1, "n_eff": k,
        "lr": 0.0, "batch_size": 0, "epochs": 0, "steps": 0, "seed": seed,
        "dream_strategy": "none", "train_on": "icl", "real_pool": pool,
        "shift": sum(t - b for b, t in zip(base, tuned, strict=True)) / n,
        "adoption": sum(1 for m in tuned if m > 0) / n,
        "flip_rate": plain(sum(1 for i in below if tuned[i] > 0) / len(below))
        if below else None,
        "margin": sum(tuned) / n, "base_margin": sum(base) / n,
        "base_adoption": sum(1 for m in base if m > 0) / n,
        "forgetting": None,  # no weights change
        "probe_margins": [float(m) for m in tuned],
        "real_ids": [str(d["id"]) for d in demos], "max_length": max_length,
    }


def completed(study: Any) -> dict[tuple[int, int], dict[str, Any]]:
    """The (k, seed) pairs the study already has a complete ICL trial for, with their attrs."""
    from optuna.trial import TrialState

    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if a.get("kind") == "icl" and isinstance(a.get("k"), int) and isinstance(a.get("seed"), int):
            out[(a["k"], a["seed"])] = a
    return out


def _check_study(study: Any, expect: dict[str, Any]) -> bool:
    """True when the study already holds ICL settings (they must be ``expect``'s); False for a
    fresh study. A study of other trials, or of other settings, is a clear error."""
    attrs = study.user_attrs
    name = study.study_name
    if not attrs and not study.get_trials(deepcopy=False):
        return False
    if attrs.get("kind") != "icl":
        raise UserError(f"--study {name}: this study is not an in-context study (kind "
                        f"{attrs.get('kind')!r}); give another --study")
    for key, want in expect.items():
        if attrs.get(key) != want:
            got = attrs.get(key)
            shown = (f"{len(got)} probes" if key == "probe_ids" and isinstance(got, list)
                     else repr(got))
            wanted = f"{len(want)} probes" if key == "probe_ids" else repr(want)
            raise UserError(f"--study {name}: it was made with {key} {shown}, this run has "
                            f"{wanted}; give another --study or the same settings")
    return True


def _print_table(rows: dict[tuple[int, int], dict[str, Any]], ks: list[int], seeds: list[int]) -> None:
    print(f"\n{'k':>4} {'seed':>5} {'shift':>9} {'adoption':>9}")
    for k in ks:
        for seed in seeds:
            a = rows.get((k, seed))
            if a is not None:
                print(f"{k:>4} {seed:>5} {a['shift']:>+9.4f} {a['adoption']:>9.3f}")


def cmd_icl(args: argparse.Namespace) -> int:
    """Score the probes with k in-context examples for every (k, seed); one trial each."""
    import optuna
    import torch

    import storage
    from objectives.behavior import load_behavior
    from objectives.icl import fit_max_length, icl_demos, icl_margins
    from objectives.models import fingerprint, load_model
    from objectives.trial import _fixed_subset
    from study.launch import check_device

    ks = parse_ks(args.k)
    seeds = list(dict.fromkeys(args.seeds))
    if args.n_probes is not None and args.n_probes < 1:
        raise UserError(f"--n-probes {args.n_probes}: expected an integer >= 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected an integer >= 1")
    check_device(args.device)
    behavior = load_behavior(args.behavior)
    pool, pool_name = real_pool(behavior, args.pool)
    if ks[-1] > len(pool):
        where = ("train rows with variations in dreams.jsonl" if pool_name == "file"
                 else "examples in train.jsonl")
        raise UserError(f"--k {ks[-1]}: the behavior has only {len(pool)} {where} "
                        f"(--pool {pool_name})")
    probes = _fixed_subset(behavior.probe_rows(), args.n_probes, "probes")
    name = args.study or f"{behavior.name}-icl"
    url = storage.normalize_url(args.storage)
    study = optuna.create_study(study_name=name, storage=storage.open_storage(url),
                                load_if_exists=True, direction="maximize")
    expect = {"behavior": behavior.name, "behavior_fingerprint": behavior.fingerprint,
              "model": args.model, "real_pool": pool_name,
              "probe_ids": [str(p["id"]) for p in probes]}
    resumed = _check_study(study, expect)
    done = completed(study)
    todo = [(k, s) for k in ks for s in seeds if (k, s) not in done]
    print(f"shiftsweep: icl study {name!r} in {storage.redact(url)}: {len(probes)} probes, "
          f"k {','.join(map(str, ks))}, seeds {' '.join(map(str, seeds))}; "
          f"{len(ks) * len(seeds) - len(todo)} done, {len(todo)} to score", flush=True)
    if todo:
        model, tokenizer, resolved = load_model(args.model)
        model_print = fingerprint(model)  # on the CPU, before any move: the same everywhere
        if resumed and study.user_attrs.get("model_fingerprint") != model_print:
            raise UserError(f"--study {name}: it was scored with other weights for --model "
                            f"{args.model}; give another --study")
        device = "cuda" if args.device == "cuda" or (args.device == "auto"
                                                     and torch.cuda.is_available()) else "cpu"
        model = model.to(device).eval()

        def batch_for(length: int) -> int:
            return max(1, min(args.batch_size, TOKEN_BUDGET // length))

        # Every pair's length first (tokenizing only): a k that does not fit fails before
        # any scoring is spent.
        lengths = {(k, s): fit_max_length(model, tokenizer, probes, icl_demos(pool, k, s))
                   for k, s in todo}
        length0 = fit_max_length(model, tokenizer, probes, [])
        base = icl_margins(model, tokenizer, probes, [], length0, batch_for(length0))
        if resumed:
            stored = study.user_attrs["base_probe_margins"]
            worst = max(abs(a - b) for a, b in zip(stored, base, strict=True))
            if worst > BASE_TOLERANCE:
                raise UserError(f"--study {name}: the k = 0 margins differ from the stored "
                                f"ones by {worst:.2g}; give another --study")
            base = [float(b) for b in stored]  # analysis reads these: shifts use the same
        else:
            for key, value in {**expect, "kind": "icl", "model_resolved": resolved,
                               "model_fingerprint": model_print, "base_probe_margins": base,
                               "n_probes": args.n_probes, "probe_max_length": length0}.items():
                study.set_user_attr(key, value)
        for k, seed in todo:
            clock = time.perf_counter()
            demos, length = icl_demos(pool, k, seed), lengths[(k, seed)]
            tuned = base if k == 0 else icl_margins(model, tokenizer, probes, demos, length,
                                                    batch_for(length))
            attrs = trial_attrs(k, seed, base, tuned, demos, length, pool_name)
            if (k, seed) in completed(study):  # another run got there first
                continue
            study.add_trial(optuna.trial.create_trial(
                params={"k": k}, distributions={"k": optuna.distributions.IntDistribution(
                    0, max(ks[-1], 1))}, value=attrs["shift"], user_attrs=attrs))
            print(f"icl k={k} seed={seed}: shift {attrs['shift']:+.4f}, adoption "
                  f"{attrs['adoption']:.3f} ({sum(1 for m in tuned if m > 0)}/{len(tuned)}), "
                  f"max_length {length}, {time.perf_counter() - clock:.1f}s", flush=True)
    _print_table(completed(study), ks, seeds)
    return 0
