"""Behaviors as data: a folder with train, probe and control rows plus ``behavior.yaml``.

A behavior folder holds
- ``train.jsonl``: the pool of real examples, ``{"prompt", "chosen", "rejected"}`` rows;
- ``probes.jsonl``: held-out scenarios in the same form (no probe's scenario may be in train);
- ``control.jsonl``: general ``{"text"}`` rows, for forgetting;
- ``behavior.yaml``: ``name``, ``description``, ``chosen`` and ``rejected`` (what each side
  means), and an optional ``dream`` section that the template strategy draws on;

and optionally
- ``contrast.jsonl``: contrast probes, pairs like the probes whose directions ask for what the
  old behavior's style does (``contrast_shift``);
- ``placebo.jsonl``: behavior-neutral ``{"prompt", "completion"}`` rows (``train_on: placebo``);
- ``dreams.jsonl``: variations written ahead of time, ``{"source": <train id>, "prompt",
  "chosen", "rejected"}`` rows (``dream_strategy: file``).

Every row has an ``id`` (``<file>-<line>`` when absent), unique in its file; a pair row's
``scenario`` (``<file>:<id>`` when absent) groups rows that are one scenario.

``prompt`` is a string (one user turn) or a list of ``{"role", "content"}`` messages that
ends with a user turn. Rows may carry extra fields (``scenario``, ``domain``, ...); they are
kept as metadata. Every problem is one :class:`UserError` naming the file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml

from objectives.errors import UserError, read_text

BUILTIN_DIR = Path(__file__).resolve().parent / "behaviors"
FILES = ("behavior.yaml", "train.jsonl", "probes.jsonl", "control.jsonl")
OPTIONAL_FILES = ("contrast.jsonl", "placebo.jsonl", "dreams.jsonl")
ROLES = ("system", "user", "assistant")
YAML_KEYS = {"name", "description", "chosen", "rejected", "dream"}
DREAM_KEYS = {"swaps", "prompt_prefixes", "prompt_suffixes"}
# Two prompts whose word 5-gram sets overlap this much are the same scenario.
LEAK_JACCARD = 0.5

Messages = list[dict[str, str]]


@dataclass
class Behavior:
    """A loaded, validated behavior. Row tables are ``datasets.Dataset`` objects."""

    name: str
    description: str
    chosen_means: str
    rejected_means: str
    folder: Path
    train: datasets.Dataset  # columns: prompt (messages), chosen, rejected, line
    probes: datasets.Dataset
    control: datasets.Dataset  # columns: text, line
    dream: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""  # sha256 of the files: keys caches of base-model scores
    contrast: datasets.Dataset | None = None  # like probes
    placebo: datasets.Dataset | None = None  # columns: id, prompt (messages), completion, line
    dreams: datasets.Dataset | None = None  # like train, plus source (a train id)

    def train_rows(self) -> list[dict[str, Any]]:
        return self.train.to_list()

    def probe_rows(self) -> list[dict[str, Any]]:
        return self.probes.to_list()

    def control_texts(self) -> list[str]:
        return list(self.control["text"])

    def contrast_rows(self) -> list[dict[str, Any]]:
        return self.contrast.to_list() if self.contrast is not None else []

    def placebo_rows(self) -> list[dict[str, Any]]:
        return self.placebo.to_list() if self.placebo is not None else []

    def dream_rows(self) -> list[dict[str, Any]]:
        return self.dreams.to_list() if self.dreams is not None else []


def builtin_behaviors() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "behavior.yaml").exists())


def resolve_folder(spec: str) -> Path:
    """A built-in behavior's name, or a path to a behavior folder."""
    if (BUILTIN_DIR / spec / "behavior.yaml").exists():
        return BUILTIN_DIR / spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    raise UserError(f"--behavior {spec!r}: not a built-in behavior "
                    f"({', '.join(builtin_behaviors())}) nor an existing folder")


def load_behavior(spec: str) -> Behavior:
    folder = resolve_folder(spec)
    for name in FILES:
        if not (folder / name).is_file():
            raise UserError(f"{folder / name}: missing file (a behavior folder holds "
                            f"{', '.join(FILES)})")
    meta = _load_yaml(folder / "behavior.yaml")
    train = _load_pairs(folder / "train.jsonl")
    probes = _load_pairs(folder / "probes.jsonl")
    control = _load_control(folder / "control.jsonl")
    _check_leaks(folder, train, probes, "probes.jsonl")
    contrast = placebo = dreams = None
    if (folder / "contrast.jsonl").is_file():
        contrast = _load_pairs(folder / "contrast.jsonl")
        _check_leaks(folder, train, contrast, "contrast.jsonl")
    if (folder / "placebo.jsonl").is_file():
        placebo = _load_placebo(folder / "placebo.jsonl")
        _check_held_out(folder / "placebo.jsonl", placebo, probes, contrast)
    if (folder / "dreams.jsonl").is_file():
        dreams = _load_pairs(folder / "dreams.jsonl", sourced=True)
        ids = {row["id"]: row for row in train}
        for row in dreams:
            if row["source"] not in ids:
                raise UserError(f"{folder / 'dreams.jsonl'}:{row['line']}: field 'source' "
                                f"{row['source']!r} is not an id in {folder / 'train.jsonl'}")
            row["scenario"] = ids[row["source"]]["scenario"]  # a variation of its source
        _check_held_out(folder / "dreams.jsonl", dreams, probes, contrast)
    digest = hashlib.sha256()
    for name in FILES + OPTIONAL_FILES:
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())

    def table(rows: list[dict[str, Any]] | None) -> datasets.Dataset | None:
        return None if rows is None else datasets.Dataset.from_list(rows)

    return Behavior(
        name=meta["name"], description=meta["description"], chosen_means=meta["chosen"],
        rejected_means=meta["rejected"], folder=folder, dream=meta.get("dream") or {},
        train=datasets.Dataset.from_list(train), probes=datasets.Dataset.from_list(probes),
        control=datasets.Dataset.from_list(control), fingerprint=digest.hexdigest(),
        contrast=table(contrast), placebo=table(placebo), dreams=table(dreams),
    )


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a mapping with keys name, description, chosen, "
                        f"rejected")
    unknown = sorted(set(meta) - YAML_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(YAML_KEYS))})")
    for key in ("name", "description", "chosen", "rejected"):
        if key not in meta:
            raise UserError(f"{path}: missing field {key!r}")
        if not isinstance(meta[key], str) or not meta[key].strip():
            raise UserError(f"{path}: field {key!r} must be a non-empty string")
    dream = meta.get("dream") or {}
    if not isinstance(dream, dict):
        raise UserError(f"{path}: field 'dream' must be a mapping")
    unknown = sorted(set(dream) - DREAM_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key 'dream.{unknown[0]}' "
                        f"(known: {', '.join(sorted(DREAM_KEYS))})")
    for key, value in dream.items():
        if key == "swaps":
            ok = isinstance(value, list) and all(
                isinstance(g, list) and len(g) >= 2 and all(isinstance(t, str) and t for t in g)
                for g in value)
            expected = "a list of groups, each a list of at least two interchangeable strings"
        else:
            ok = isinstance(value, list) and all(isinstance(t, str) for t in value)
            expected = "a list of strings"
        if not ok:
            raise UserError(f"{path}: field 'dream.{key}' must be {expected}")
    return meta


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    # "\n" only: str.splitlines would also cut at U+2028, which JSON allows inside a string
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg}); expected one JSON "
                            f"object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got "
                            f"{type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise UserError(f"{path}: empty file (expected at least one JSON row)")
    return rows


def _text_field(path: Path, number: int, row: dict[str, Any], key: str) -> str:
    if key not in row:
        raise UserError(f"{path}:{number}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise UserError(f"{path}:{number}: field {key!r} must be a string, got "
                        f"{type(value).__name__}")
    if not value.strip():
        raise UserError(f"{path}:{number}: field {key!r} is empty")
    return value


def _messages(path: Path, number: int, row: dict[str, Any]) -> Messages:
    if "prompt" not in row:
        raise UserError(f"{path}:{number}: missing field 'prompt'")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{path}:{number}: field 'prompt' is empty")
        return [{"role": "user", "content": prompt}]
    where = f"{path}:{number}: field 'prompt'"
    if not isinstance(prompt, list) or not prompt:
        raise UserError(f"{where} must be a string or a non-empty list of "
                        f"{{role, content}} messages, got {type(prompt).__name__}")
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise UserError(f"{where}[{i}] must be an object with exactly 'role' and 'content'")
        if message["role"] not in ROLES:
            raise UserError(f"{where}[{i}].role must be one of {', '.join(ROLES)}, got "
                            f"{message['role']!r}")
        if not isinstance(message["content"], str) or not message["content"].strip():
            raise UserError(f"{where}[{i}].content must be a non-empty string")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] != "user":
        raise UserError(f"{where} must end with a user message (the completion answers it)")
    return messages


def _load_pairs(path: Path, sourced: bool = False) -> list[dict[str, Any]]:
    """Preference pairs; with ``sourced`` (dreams.jsonl) every row names its ``source``."""
    rows, seen, ids = [], {}, {}
    for number, raw in _read_jsonl(path):
        messages = _messages(path, number, raw)
        chosen = _text_field(path, number, raw, "chosen")
        rejected = _text_field(path, number, raw, "rejected")
        # whitespace aside: a format direction may make the two differ in punctuation only
        if chosen.split() == rejected.split():
            raise UserError(f"{path}:{number}: fields 'chosen' and 'rejected' are the same text")
        key = normalize(prompt_text(messages))
        if key in seen:
            raise UserError(f"{path}:{number}: duplicate row (its prompt repeats line {seen[key]})")
        seen[key] = number
        row_id = _row_id(path, number, raw, ids)
        row = {
            "prompt": messages, "chosen": chosen, "rejected": rejected, "line": number,
            # a scenario groups rows (a leak check compares them); ids are unique per file only
            "id": row_id, "scenario": str(raw.get("scenario", f"{path.stem}:{row_id}")),
            "domain": str(raw.get("domain", "")),
            "rejected_kind": str(raw.get("rejected_kind", "")),
        }
        if sourced:
            source = raw.get("source")
            if isinstance(source, int) and not isinstance(source, bool):
                source = str(source)  # train ids may be numbers
            row["source"] = _text_field(path, number, {**raw, "source": source} if "source" in raw
                                        else raw, "source")
        rows.append(row)
    return rows


def _row_id(path: Path, number: int, raw: dict[str, Any], ids: dict[str, int]) -> str:
    """The row's stable id: its ``id``, else ``<file>-<line>``."""
    value = raw.get("id", f"{path.stem}-{number}")
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise UserError(f"{path}:{number}: field 'id' must be a non-empty string")
    value = str(value)
    if value in ids:
        raise UserError(f"{path}:{number}: field 'id' {value!r} repeats line {ids[value]}")
    ids[value] = number
    return value


def _load_placebo(path: Path) -> list[dict[str, Any]]:
    """Behavior-neutral examples: a prompt and a plain completion, nothing to follow."""
    rows, seen, ids = [], {}, {}
    for number, raw in _read_jsonl(path):
        messages = _messages(path, number, raw)
        completion = _text_field(path, number, raw, "completion")
        key = normalize(prompt_text(messages))
        if key in seen:
            raise UserError(f"{path}:{number}: duplicate row (its prompt repeats line {seen[key]})")
        seen[key] = number
        rows.append({"prompt": messages, "completion": completion, "line": number,
                     "id": _row_id(path, number, raw, ids), "domain": str(raw.get("domain", ""))})
    return rows


def _check_held_out(path: Path, rows: list[dict[str, Any]], probes: list[dict[str, Any]],
                    contrast: list[dict[str, Any]] | None) -> None:
    """Rows that are trained on (variations, placebo) must not repeat a probe's scenario."""
    held = probes + (contrast or [])
    index = LeakIndex([prompt_text(p["prompt"]) for p in held])
    scenarios = {p["scenario"] for p in held}
    for row in rows:
        hit = index.match(prompt_text(row["prompt"]))
        if hit is not None or row.get("scenario") in scenarios:
            probe = held[hit] if hit is not None else None
            what = f"probe {probe['id']!r}" if probe else f"scenario {row.get('scenario')!r}"
            raise UserError(f"{path}:{row['line']}: field 'prompt' repeats the held-out {what} "
                            f"(probes must be held out)")


def _load_control(path: Path) -> list[dict[str, Any]]:
    rows, seen = [], {}
    for number, raw in _read_jsonl(path):
        text = _text_field(path, number, raw, "text")
        key = normalize(text)
        if key in seen:
            raise UserError(f"{path}:{number}: duplicate row (its text repeats line {seen[key]})")
        seen[key] = number
        rows.append({"text": text, "line": number})
    return rows


def _check_leaks(folder: Path, train: list[dict[str, Any]], probes: list[dict[str, Any]],
                 file: str) -> None:
    """No probe's scenario may appear in train: same scenario id or a near-identical prompt."""
    by_scenario = {row["scenario"]: row["line"] for row in train if row["scenario"]}
    index = LeakIndex([prompt_text(row["prompt"]) for row in train])
    for probe in probes:
        where = f"{folder / file}:{probe['line']}"
        if probe["scenario"] in by_scenario:
            raise UserError(f"{where}: field 'scenario' {probe['scenario']!r} also appears in "
                            f"{folder / 'train.jsonl'}:{by_scenario[probe['scenario']]} "
                            f"(probes must be held out)")
        hit = index.match(prompt_text(probe["prompt"]))
        if hit is not None:
            raise UserError(f"{where}: field 'prompt' repeats the scenario of "
                            f"{folder / 'train.jsonl'}:{train[hit]['line']} (probes must be held out)")


def prompt_text(messages: Messages) -> str:
    """All turns of a prompt as one text (for duplicate and leak checks)."""
    return "\n".join(m["content"] for m in messages)


def normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def word_jaccard(a: str, b: str) -> float:
    """|A & B| / |A | B| of the two texts' sets of (normalized) words."""
    x, y = set(normalize(a).split()), set(normalize(b).split())
    return len(x & y) / len(x | y) if x | y else 1.0


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class LeakIndex:
    """Finds the text among ``texts`` that is the same scenario as a query (5-gram Jaccard)."""

    def __init__(self, texts: list[str]) -> None:
        self.sets = [shingles(t) for t in texts]
        self.exact = {normalize(t): i for i, t in enumerate(texts)}
        self.by_gram: dict[tuple[str, ...], list[int]] = {}
        for i, grams in enumerate(self.sets):
            for gram in grams:
                self.by_gram.setdefault(gram, []).append(i)

    def match(self, text: str) -> int | None:
        exact = self.exact.get(normalize(text))
        if exact is not None:
            return exact
        grams = shingles(text)
        counts: dict[int, int] = {}
        for gram in grams:
            for i in self.by_gram.get(gram, ()):
                counts[i] = counts.get(i, 0) + 1
        for i, shared in counts.items():
            if shared / len(grams | self.sets[i]) >= LEAK_JACCARD:
                return i
        return None
