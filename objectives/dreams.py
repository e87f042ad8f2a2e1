"""Dream variations: each real example becomes itself plus m-1 generated variations.

Strategies
- ``template``: deterministic from the seed. Swaps interchangeable terms (names, places,
  weekdays, tools, the phrasing of a direction; built-in groups plus the behavior's
  ``dream.swaps``) consistently in prompt and both responses, varies contractions, the
  framing of the request and its sentence order. It adds nothing to the answers (an added
  stock opener would be a style only the variations have). The behavior (which side follows
  the direction) is untouched. These are near-copies: ``dream_overlap`` says how near.
- ``file``: variations written ahead of time (by hand, or by a stronger model run elsewhere)
  in the behavior's ``dreams.jsonl``; real examples are drawn from the sources that have
  variations, and each contributes m-1 of its own (a seeded, nested pick).
- ``model``: a generator model (the trained model's base by default) paraphrases the last user
  turn and both responses by sampling: the real dream loop. Accepted variations are cached on
  disk per (generator fingerprint, source row, seed, settings), so a sweep generates each once.
- ``repeat``: m exact copies, the control for "more steps on the same data".

``template`` and ``model`` variations are de-duplicated (against each other and every real
example) and never reproduce a probe's scenario (``file`` variations are checked when the
behavior loads).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from objectives.behavior import LeakIndex, normalize, prompt_text, word_jaccard
from objectives.errors import UserError
from objectives.records import write_json

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


def file_sources(pool: list[Row], written: list[Row]) -> list[Row]:
    """The train rows that have variations in dreams.jsonl, in train order."""
    have = {row["source"] for row in written}
    return [row for row in pool if row["id"] in have]


def file_variations(real: list[Row], multiplier: int, seed: int, written: list[Row]) -> list[Row]:
    """m-1 written variations of each real row: the first of a seeded shuffle of its own, so
    a larger m contains a smaller one."""
    by_source: dict[str, list[Row]] = {}
    for row in written:
        by_source.setdefault(row["source"], []).append(row)
    out: list[Row] = []
    for i, row in enumerate(real):
        mine = sorted(by_source.get(row["id"], []), key=lambda r: r["id"])
        if len(mine) < multiplier - 1:
            raise UserError(f"dream_multiplier {multiplier}: dreams.jsonl has {len(mine)} "
                            f"variations of train id {row['id']!r} (needs {multiplier - 1}); "
                            f"lower --dream-multiplier or write more variations")
        random.Random(f"file:{seed}:{row['id']}").shuffle(mine)
        out += [dict(v, origin=i, kind="variation") for v in mine[:multiplier - 1]]
    return out


def dream_overlap(rows: list[Row]) -> float | None:
    """Mean word Jaccard of each variation's (or copy's) chosen answer with its source's:
    1.0 for repeat, near 1 for near-copies; None when the set has no variations."""
    sources = {r["origin"]: r for r in rows if r["kind"] == "real"}
    values = [word_jaccard(r["chosen"], sources[r["origin"]]["chosen"]) for r in rows
              if r["kind"] != "real"]
    return sum(values) / len(values) if values else None


class DreamCache:
    """Accepted ``model`` variations on disk, one file per (generator, source row, seed, settings).

    A trial that needs m-1 variations of a row takes the first m-1 cached ones and generates
    only the rest; ``generated`` and ``reused`` count what this trial did.
    """

    def __init__(self, root: Path, generator: str, seed: int, settings: str) -> None:
        self.root, self.generator, self.seed, self.settings = root, generator, seed, settings
        self.generated = 0
        self.reused = 0

    def _path(self, row: Row) -> Path:
        key = hashlib.sha256(json.dumps([self.generator, self.seed, self.settings,
                                         _key(row)]).encode()).hexdigest()[:24]
        return self.root / f"{key}.json"

    def load(self, row: Row) -> list[Row]:
        try:
            data = json.loads(self._path(row).read_text())
        except (OSError, json.JSONDecodeError):
            return []
        return data if isinstance(data, list) else []

    def save(self, row: Row, variations: list[Row]) -> None:
        write_json(self._path(row), variations, indent=None)


def make_training_set(real: list[Row], multiplier: int, strategy: str, seed: int,
                      probes: list[Row], dream_config: dict[str, Any] | None = None,
                      paraphrase: Paraphraser | None = None, written: list[Row] | None = None,
                      cache: DreamCache | None = None) -> list[Row]:
    """The n_real * m rows a trial trains on. Each has ``origin`` (index into ``real``) and
    ``kind`` ("real", "variation" or "copy"). ``written``: dreams.jsonl rows (strategy file);
    ``cache``: where model variations are kept (strategy model)."""
    out = [dict(row, origin=i, kind="real") for i, row in enumerate(real)]
    if multiplier == 1:
        return out
    if strategy == "repeat":
        for i, row in enumerate(real):
            out += [dict(row, origin=i, kind="copy") for _ in range(multiplier - 1)]
        return out
    if strategy == "file":
        if not written:
            raise UserError("--dream-strategy file: the behavior has no dreams.jsonl")
        return out + file_variations(real, multiplier, seed, written)
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
        return out + _model_variations(real, multiplier, seed, paraphrase, guard, cache)
    raise UserError(f"--dream-strategy {strategy!r}: expected template, file, model or repeat")


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
        new["chosen"] = self._swap(row["chosen"], mapping)
        new["rejected"] = self._swap(row["rejected"], mapping)
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

def _proper_start(text: str) -> bool:
    """True when the first word must stay capitalized (a name, an acronym, "I")."""
    first = text.split(" ", 1)[0]
    return first.isupper() or first in {t for g in BUILTIN_SWAPS for t in g}


def _model_variations(real: list[Row], multiplier: int, seed: int, paraphrase: Paraphraser,
                      guard: _Guard, cache: DreamCache | None = None) -> list[Row]:
    """Paraphrase the last user turn and both responses; retry rejected samples. Cached
    variations of a row are used first, new ones are added to its cache."""
    want = {i: multiplier - 1 for i in range(len(real))}
    out: list[Row] = []
    stored: dict[int, list[Row]] = {}
    if cache is not None:
        for i, row in enumerate(real):
            stored[i] = cache.load(row)
            for cached in stored[i]:
                candidate = {**copy.deepcopy(row), **cached}  # the source's labels, cached text
                if want[i] and guard.accept(candidate):
                    out.append(dict(candidate, origin=i, kind="variation"))
                    want[i] -= 1
                    cache.reused += 1
    for attempt in range(8):
        jobs = [(i, k) for i, n in want.items() for k in range(n)]
        if not jobs:
            break
        texts = []
        for i, _ in jobs:
            row = real[i]
            texts += [row["prompt"][-1]["content"], row["chosen"], row["rejected"]]
        # seeded by how many variations are already cached too: a trial that extends the
        # cache must not draw again the samples an earlier trial drew (and kept)
        cached = sum(len(v) for v in stored.values())
        results = paraphrase(texts, seed * 1000 + attempt + 7919 * cached)
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
                if cache is not None:
                    cache.generated += 1
                    stored.setdefault(i, []).append(
                        {k: candidate[k] for k in ("prompt", "chosen", "rejected")})
                    cache.save(row, stored[i])
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
