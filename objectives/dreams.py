"""Dream variations: each real example becomes itself plus m-1 generated variations.

Strategies
- ``template``: deterministic from the seed. Swaps interchangeable terms (names, places,
  weekdays, tools, the phrasing of a direction; built-in groups plus the behavior's
  ``dream.swaps``) consistently in prompt and both responses, varies contractions, openers
  of both responses, the framing of the request and its sentence order. The behavior (which
  side follows the direction) is untouched.
- ``model``: a generator model (the trained model's base by default) paraphrases the last user
  turn and both responses by sampling: the real dream loop.
- ``repeat``: m exact copies, the control for "more steps on the same data".

``template`` and ``model`` variations are de-duplicated (against each other and every real
example) and never reproduce a probe's scenario.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from typing import Any

from objectives.behavior import LeakIndex, normalize, prompt_text
from objectives.errors import UserError

Row = dict[str, Any]
# Paraphrases a list of texts; returns one candidate (or None) per text.
Paraphraser = Callable[[list[str], int], list[str | None]]

MAX_TRIES = 60  # attempts per variation before the template space counts as exhausted

BUILTIN_SWAPS: list[list[str]] = [
    ["Maria", "Priya", "Aisha", "Elena", "Hannah", "Sofia", "Mei", "Fatima", "Claire", "Nadia"],
    ["Sam", "Tom", "Lukas", "Omar", "Diego", "Ravi", "Ben", "Kenji", "Marcus", "Pavel"],
    ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
    ["Lisbon", "Porto", "Seville", "Krakow", "Lyon", "Bologna", "Ghent", "Valencia"],
    ["Berlin", "Vienna", "Prague", "Budapest", "Munich", "Zurich"],
    ["Chicago", "Denver", "Austin", "Seattle", "Boston", "Portland"],
]
CONTRACTIONS: list[list[str]] = [
    ["Here's", "Here is"], ["here's", "here is"], ["I'll", "I will"], ["I'm", "I am"],
    ["don't", "do not"], ["Don't", "Do not"], ["it's", "it is"], ["It's", "It is"],
    ["you're", "you are"], ["You're", "You are"], ["that's", "that is"],
    ["That's", "That is"], ["won't", "will not"], ["can't", "cannot"], ["isn't", "is not"],
    ["we'll", "we will"], ["We'll", "We will"], ["you'll", "you will"], ["let's", "let us"],
]
CHOSEN_OPENERS = ["", "Sure.", "Okay.", "Got it.", "Right.", "Done.", "On it."]
REJECTED_OPENERS = ["", "Happy to help!", "Great question!", "Sure thing!", "Of course!",
                    "Absolutely, happy to help."]
PROMPT_PREFIXES = ["", "Quick one: ", "Hi! ", "Hey, ", "Okay, ", "So, "]
PROMPT_SUFFIXES = ["", " Thanks.", " Thanks!", " Thank you.", " Cheers."]


def select_real(pool: list[Row], n_real: int, seed: int) -> list[Row]:
    """The first n_real rows of a seeded permutation: a larger n_real contains a smaller one."""
    if n_real > len(pool):
        raise UserError(f"--n-real {n_real}: the behavior's train.jsonl has only {len(pool)} "
                        f"examples")
    order = list(range(len(pool)))
    random.Random(f"real:{seed}").shuffle(order)
    return [pool[i] for i in order[:n_real]]


def make_training_set(real: list[Row], multiplier: int, strategy: str, seed: int,
                      probes: list[Row], dream_config: dict[str, Any] | None = None,
                      paraphrase: Paraphraser | None = None) -> list[Row]:
    """The n_real * m rows a trial trains on. Each has ``origin`` (index into ``real``) and
    ``kind`` ("real", "variation" or "copy")."""
    out = [dict(row, origin=i, kind="real") for i, row in enumerate(real)]
    if multiplier == 1:
        return out
    if strategy == "repeat":
        for i, row in enumerate(real):
            out += [dict(row, origin=i, kind="copy") for _ in range(multiplier - 1)]
        return out
    guard = _Guard(real, probes)
    if strategy == "template":
        templater = Templater(dream_config or {})
        for i, row in enumerate(real):
            rng = random.Random(f"dream:{seed}:{normalize(prompt_text(row['prompt']))}")
            for _ in range(multiplier - 1):
                for _attempt in range(MAX_TRIES):
                    candidate = templater.vary(row, rng)
                    if guard.accept(candidate):
                        out.append(dict(candidate, origin=i, kind="variation"))
                        break
                else:
                    raise UserError(
                        f"dream_multiplier {multiplier}: the template strategy found only "
                        f"{sum(1 for r in out if r['origin'] == i) - 1} distinct variations of "
                        f"train.jsonl line {row.get('line')}; lower --dream-multiplier, add "
                        f"dream.swaps to behavior.yaml, or use --dream-strategy model")
        return out
    if strategy == "model":
        if paraphrase is None:
            raise ValueError("dream strategy 'model' needs a paraphraser")
        return out + _model_variations(real, multiplier, seed, paraphrase, guard)
    raise UserError(f"--dream-strategy {strategy!r}: expected template, model or repeat")


class _Guard:
    """Accepts a variation only if it is new and is not a probe's scenario."""

    def __init__(self, real: list[Row], probes: list[Row]) -> None:
        self.seen = {_key(row) for row in real}
        self.probes = LeakIndex([prompt_text(p["prompt"]) for p in probes])

    def accept(self, row: Row) -> bool:
        key = _key(row)
        if key in self.seen or self.probes.match(prompt_text(row["prompt"])) is not None:
            return False
        self.seen.add(key)
        return True


def _key(row: Row) -> tuple[str, str, str]:
    return (normalize(prompt_text(row["prompt"])), normalize(row["chosen"]),
            normalize(row["rejected"]))


class Templater:
    """Rule-based rewrites that keep which side follows the direction."""

    def __init__(self, dream: dict[str, Any]) -> None:
        self.swaps = BUILTIN_SWAPS + CONTRACTIONS + [list(g) for g in dream.get("swaps", [])]
        self.chosen_openers = dream.get("chosen_openers") or CHOSEN_OPENERS
        self.rejected_openers = dream.get("rejected_openers") or REJECTED_OPENERS
        self.prefixes = dream.get("prompt_prefixes") or PROMPT_PREFIXES
        self.suffixes = dream.get("prompt_suffixes") or PROMPT_SUFFIXES
        terms = sorted({t for group in self.swaps for t in group}, key=len, reverse=True)
        self.pattern = re.compile(r"(?<![\w'])(" + "|".join(map(re.escape, terms)) + r")(?![\w'])")
        self.groups: dict[str, list[list[str]]] = {}
        for group in self.swaps:
            for term in group:
                self.groups.setdefault(term, []).append(group)

    def vary(self, row: Row, rng: random.Random) -> Row:
        texts = [m["content"] for m in row["prompt"]] + [row["chosen"], row["rejected"]]
        mapping = self._mapping(" ".join(texts), rng)
        new = copy.deepcopy(row)
        for message in new["prompt"]:
            message["content"] = self._swap(message["content"], mapping)
        last = new["prompt"][-1]
        last["content"] = self._frame(last["content"], rng)
        new["chosen"] = self._open(self._swap(row["chosen"], mapping), self.chosen_openers, rng)
        new["rejected"] = self._open(self._swap(row["rejected"], mapping),
                                     self.rejected_openers, rng)
        return new

    def _mapping(self, text: str, rng: random.Random) -> dict[str, str]:
        """One replacement per term found, used in every field so the example stays coherent."""
        mapping: dict[str, str] = {}
        taken = set(self.pattern.findall(text))
        for term in sorted(taken):
            if term in mapping or rng.random() < 0.35:
                continue
            group = rng.choice(self.groups[term])
            options = [t for t in group if t != term and t not in taken
                       and t not in mapping.values()]
            if options:
                mapping[term] = rng.choice(options)
        return mapping

    def _swap(self, text: str, mapping: dict[str, str]) -> str:
        if not mapping:
            return text
        return self.pattern.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)

    def _frame(self, text: str, rng: random.Random) -> str:
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip())
        if len(sentences) >= 2 and "\n" not in text and rng.random() < 0.35:
            sentences = [sentences[-1], *sentences[:-1]]  # the direction first, or last
        body = " ".join(sentences)
        prefix = rng.choice(self.prefixes)
        if prefix and body[:1].isupper() and not body.startswith("I "):
            body = body[0].lower() + body[1:] if not _proper_start(body) else body
        suffix = rng.choice(self.suffixes)
        if suffix and not body.rstrip().endswith((".", "!", "?")):
            suffix = "." + suffix
        return prefix + body + suffix

    def _open(self, text: str, openers: list[str], rng: random.Random) -> str:
        body = text
        for opener in sorted((o for o in openers if o), key=len, reverse=True):
            if body.startswith(opener + " "):
                body = body[len(opener) + 1:]
                break
        opener = rng.choice(openers)
        return f"{opener} {body}" if opener else body


def _proper_start(text: str) -> bool:
    """True when the first word must stay capitalized (a name, an acronym, "I")."""
    first = text.split(" ", 1)[0]
    return first.isupper() or first in {t for g in BUILTIN_SWAPS for t in g}


def _model_variations(real: list[Row], multiplier: int, seed: int, paraphrase: Paraphraser,
                      guard: _Guard) -> list[Row]:
    """Paraphrase the last user turn and both responses; retry rejected samples."""
    want = {i: multiplier - 1 for i in range(len(real))}
    out: list[Row] = []
    for attempt in range(8):
        jobs = [(i, k) for i, n in want.items() for k in range(n)]
        if not jobs:
            break
        texts = []
        for i, _ in jobs:
            row = real[i]
            texts += [row["prompt"][-1]["content"], row["chosen"], row["rejected"]]
        results = paraphrase(texts, seed * 1000 + attempt)
        for j, (i, _) in enumerate(jobs):
            prompt, chosen, rejected = results[3 * j: 3 * j + 3]
            row = real[i]
            if not all(_plausible(new, old) for new, old in (
                    (prompt, row["prompt"][-1]["content"]), (chosen, row["chosen"]),
                    (rejected, row["rejected"]))):
                continue
            candidate = copy.deepcopy(row)
            candidate["prompt"][-1]["content"] = prompt
            candidate["chosen"], candidate["rejected"] = chosen, rejected
            if normalize(chosen) != normalize(rejected) and guard.accept(candidate):
                out.append(dict(candidate, origin=i, kind="variation"))
                want[i] -= 1
    missing = {i: n for i, n in want.items() if n > 0}
    if missing:
        i = next(iter(missing))
        raise UserError(f"--dream-strategy model: the generator gave {multiplier - 1 - missing[i]} "
                        f"usable variations of train.jsonl line {real[i].get('line')} after 8 "
                        f"rounds (needed {multiplier - 1}); try another --dream-model or a lower "
                        f"--dream-multiplier")
    out.sort(key=lambda r: r["origin"])
    return out


def _plausible(new: str | None, old: str) -> bool:
    """A usable paraphrase: a different text of comparable length."""
    if not new or normalize(new) == normalize(old):
        return False
    ratio = len(new) / max(1, len(old))
    return 0.4 <= ratio <= 2.5
