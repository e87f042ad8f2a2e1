"""The behavioral-shift score: margins on preference pairs, and forgetting on control texts.

Definitions (../shared/science.md), for a probe x with chosen y+ and rejected y-:
- ``margin(x)`` = mean-token log p(y+|x) - mean-token log p(y-|x)
- ``shift`` = mean over probes of margin_tuned(x) - margin_base(x)
- ``adoption`` = fraction of probes with margin_tuned(x) > 0
- ``flip_rate`` = among probes with margin_base(x) <= 0, the fraction with margin_tuned(x) > 0
- ``forgetting`` = mean per-token KL(p_base || p_tuned) over control texts, teacher-forced
- ``train_shift`` = ``shift`` on the real training examples the trial used
- ``contrast_shift``, ``contrast_adoption`` = ``shift`` and ``adoption`` on the contrast probes
- ``gen_adoption`` = on a fixed subset of probes, the fraction whose greedy answer the
  embedding judge (``objectives.judge``) finds closer to chosen than to rejected

(``objectives.measures`` is the registry of every measure's name, direction and format.)

Every function here works on this process's share of the rows: the caller splits rows over
processes and gathers the results (see ``objectives.trial``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from objectives.tokens import Encoded, collate, encode_pair, encode_text, token_logprobs

# A factory of the context to run forward passes in (accelerate's autocast, or nothing).
Autocast = Callable[[], AbstractContextManager]


def _batches(items: list[Encoded], size: int) -> list[list[int]]:
    """Index batches sorted by length, so little of each batch is padding."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    return [order[i:i + size] for i in range(0, len(order), size)]


def _scored_logprobs(model: Any, batch: list[Encoded], pad_id: int, autocast: Autocast
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p of each sequence's targets, computing logits only where targets are."""
    device = next(model.parameters()).device
    ids, mask, labels, positions = collate(batch, pad_id, device, left=True)
    keep = max(len(e) - max(e.start, 1) for e in batch) + 1
    with autocast():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=keep).logits
    return token_logprobs(logits, labels[:, -keep:])


@torch.no_grad()
def mean_logprobs(model: Any, tokenizer: Any, pairs: list[tuple[list[dict[str, str]], str]],
                  max_length: int, batch_size: int, autocast: Autocast = nullcontext) -> list[float]:
    """Mean-token log p(completion | prompt) for each (messages, completion) pair."""
    encoded = [encode_pair(tokenizer, m, c, max_length, add_eos=False) for m, c in pairs]
    out = [math.nan] * len(encoded)
    for batch in _batches(encoded, batch_size):
        picked, scored = _scored_logprobs(model, [encoded[i] for i in batch],
                                          tokenizer.pad_token_id, autocast)
        means = picked.sum(-1) / scored.sum(-1).clamp(min=1)
        for i, value in zip(batch, means.tolist(), strict=True):
            out[i] = value
    return out


def margins(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_length: int,
            batch_size: int, autocast: Autocast = nullcontext) -> list[float]:
    """``margin(x)`` for each row (chosen vs rejected under the same prompt)."""
    pairs = [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]
    logps = mean_logprobs(model, tokenizer, pairs, max_length, batch_size, autocast)
    n = len(rows)
    return [logps[i] - logps[n + i] for i in range(n)]


def _next_token_logp(model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                     autocast: Autocast) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) at every position t, vocabulary-wide, in float32."""
    with autocast():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


# The logits of one forward pass in the forgetting pass stay under this (a control batch is
# split into fewer rows when needed); about three such tensors live at once (both models'
# log-probs and the KL terms). On an idle 2-core CPU, 16 control texts of the default model
# took 7.9-8.5 s in 64 MiB pieces (3 rows) and 9.0-9.2 s as one batch: splitting is free.
# A row of 384 tokens x a 150k vocabulary is 230 MB: one row a forward there.
KL_LOGITS_BYTES = 64 * 2**20


@torch.no_grad()
def control_kl(model: Any, as_base: Callable[[], AbstractContextManager], tokenizer: Any,
               texts: list[str], max_length: int, batch_size: int,
               autocast: Autocast = nullcontext, logits_bytes: int | None = None
               ) -> tuple[float, int]:
    """Sum over positions of KL(p_base || p_tuned) on ``texts``, teacher-forced, and the
    number of positions (every next-token prediction of each text).

    ``model`` is the tuned model; inside ``as_base()`` the same module computes the base
    model's outputs (LoRA: its adapter disabled; full fine-tuning: the base weights swapped
    in). Both distributions are computed per batch and dropped: nothing vocabulary-wide is
    kept beyond one batch.
    """
    encoded = [encode_text(tokenizer, t, max_length) for t in texts]
    total, count = 0.0, 0
    device = next(model.parameters()).device
    vocab = model.config.vocab_size  # the logits' width (only sizes the row split)
    for batch in _batches(encoded, batch_size):
        longest = max(len(encoded[i]) for i in batch)
        rows = max(1, (logits_bytes or KL_LOGITS_BYTES) // (4 * longest * vocab))
        for start in range(0, len(batch), rows):
            part = [encoded[i] for i in batch[start:start + rows]]
            ids, mask, _, positions = collate(part, tokenizer.pad_token_id, device)
            tuned = _next_token_logp(model, ids, mask, positions, autocast)
            with as_base():
                base = _next_token_logp(model, ids, mask, positions, autocast)
            # kl_div(input=log p_tuned, target=log p_base) = p_base * (log p_base - log p_tuned)
            kl = torch.nn.functional.kl_div(tuned, base, reduction="none", log_target=True).sum(-1)
            del tuned, base
            scored = mask[:, 1:].bool()  # right padding: position t predicts real token t+1
            total += float(kl[scored].double().sum())
            count += int(scored.sum())
    return total, count


def summarize(base_probe: list[float], tuned_probe: list[float], base_train: list[float],
              tuned_train: list[float], kl_total: float, kl_count: int) -> dict[str, float]:
    """The trial's measures from per-row margins and the control KL sums."""
    n = len(base_probe)
    deltas = [t - b for b, t in zip(base_probe, tuned_probe, strict=True)]
    below = [i for i in range(n) if base_probe[i] <= 0]
    train_deltas = [t - b for b, t in zip(base_train, tuned_train, strict=True)]
    return {
        "shift": sum(deltas) / n,
        "adoption": sum(1 for m in tuned_probe if m > 0) / n,
        "flip_rate": (sum(1 for i in below if tuned_probe[i] > 0) / len(below)) if below else math.nan,
        "margin": sum(tuned_probe) / n,
        "base_margin": sum(base_probe) / n,
        "base_adoption": sum(1 for m in base_probe if m > 0) / n,
        "train_shift": sum(train_deltas) / len(train_deltas),
        "forgetting": kl_total / kl_count if kl_count else math.nan,
    }


def contrast_measures(base: list[float], tuned: list[float]) -> dict[str, float]:
    """``contrast_shift`` and ``contrast_adoption`` (NaN when the behavior has no contrast probes)."""
    n = len(base)
    if not n:
        return {"contrast_shift": math.nan, "contrast_adoption": math.nan,
                "contrast_base_adoption": math.nan}
    return {"contrast_shift": sum(t - b for b, t in zip(base, tuned, strict=True)) / n,
            "contrast_adoption": sum(1 for m in tuned if m > 0) / n,
            "contrast_base_adoption": sum(1 for m in base if m > 0) / n}


def generation_measures(base: list[dict[str, Any]], tuned: list[dict[str, Any]],
                        gen_rows: list[dict[str, Any]], probes: list[dict[str, Any]],
                        tuned_margins: list[float]) -> dict[str, float]:
    """``gen_adoption`` (tuned and base) and how often the judge agrees with the margin's
    verdict (margin_tuned > 0) on the same probes. NaN when the check is off."""
    n = len(tuned)
    if not n:
        return {"gen_adoption": math.nan, "gen_base_adoption": math.nan,
                "gen_agreement": math.nan}
    margin_of = {p["line"]: m for p, m in zip(probes, tuned_margins, strict=True)}
    agree = sum(1 for r, g in zip(gen_rows, tuned, strict=True)
                if g["adopted"] == (margin_of[r["line"]] > 0))
    return {"gen_adoption": sum(1 for g in tuned if g["adopted"]) / n,
            "gen_base_adoption": sum(1 for g in base if g["adopted"]) / n,
            "gen_agreement": agree / n}
