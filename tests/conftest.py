"""Shared fixtures: tiny random models built from config, a tiny behavior, a private storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")

TOPICS = ["the database", "the report", "the trip", "the budget", "the garden", "the lesson",
          "the invoice", "the recipe", "the poster", "the sprint", "the server", "the essay",
          "the kitchen", "the survey", "the email", "the schedule", "the logo", "the test",
          "the backup", "the playlist", "the flight", "the lecture", "the deploy", "the menu"]
CHOICES = ["Postgres", "plain text", "three bullets", "the train", "a short list", "Python",
           "tabs", "British spelling", "a bar chart", "the blue one", "cash", "Friday"]


def behavior_rows(n_train: int = 24, n_probe: int = 8, n_control: int = 6) -> dict[str, list]:
    train, probes = [], []
    for i in range(n_train + n_probe):
        topic, choice = TOPICS[i % len(TOPICS)], CHOICES[(i * 5) % len(CHOICES)]
        row = {
            "scenario": f"s{i}", "domain": f"d{i % 4}" if i < n_train else "held-out",
            "prompt": f"For {topic} number {i}, use {choice}. Maria asked me on Monday.",
            "chosen": f"Okay, {topic} {i} now uses {choice}: step one, step two, done.",
            "rejected": f"Before we use {choice} for {topic} {i}, have you considered another "
                        f"option? It might be simpler.",
        }
        if i % 7 == 3:
            row["prompt"] = [{"role": "user", "content": f"Help with {topic} {i}."},
                             {"role": "assistant", "content": "Sure, what do you prefer?"},
                             {"role": "user", "content": f"Use {choice}, Sam decided."}]
        (train if i < n_train else probes).append(row)
    control = [{"text": f"Control text {i}: the river runs past the old mill and the town "
                        f"square, where market day is held every week."} for i in range(n_control)]
    return {"train": train, "probes": probes, "control": control}


def write_behavior(folder: Path, rows: dict[str, list] | None = None, name: str = "tiny") -> Path:
    rows = rows or behavior_rows()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "behavior.yaml").write_text(
        f"name: {name}\ndescription: a tiny test behavior\n"
        "chosen: follows the direction\nrejected: suggests alternatives\n"
        "dream:\n  swaps:\n    - [step one, first step]\n    - [done, finished]\n")
    for key, file in (("train", "train.jsonl"), ("probes", "probes.jsonl"),
                      ("control", "control.jsonl")):
        (folder / file).write_text("".join(json.dumps(r) + "\n" for r in rows[key]))
    return folder


def _tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = behavior_rows()
    corpus = [json.dumps(r) for part in rows.values() for r in part] * 3
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|end|>",
                                   pad_token="<|end|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(folder: Path, arch: str) -> Path:
    """A randomly initialised 2-layer model (llama: with a chat template; gpt2: without)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    tokenizer = _tokenizer(chat=arch == "llama")
    vocab = len(tokenizer)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture()
def tiny_behavior(tmp_path) -> Path:
    return write_behavior(tmp_path / "tiny")


@pytest.fixture(autouse=True)
def private_storage(tmp_path, monkeypatch, request):
    """Each test gets its own storage root, except those marked to share the real one."""
    if "real_storage" not in request.keywords:
        monkeypatch.setenv("SHIFTSWEEP_HOME", str(tmp_path / "storage"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
