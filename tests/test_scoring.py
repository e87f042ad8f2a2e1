import math

import pytest
import torch

from objectives import scoring
from objectives.models import load_model
from objectives.tokens import encode_pair, render_prompt


def _by_hand(model, tokenizer, messages, completion):
    """Mean log p of the completion, one unpadded forward per completion token."""
    prompt = render_prompt(tokenizer, messages)
    lead = "" if tokenizer.chat_template else " "
    answer = tokenizer(lead + completion, add_special_tokens=False)["input_ids"]
    total = 0.0
    with torch.no_grad():
        for k, token in enumerate(answer):
            ids = torch.tensor([prompt + answer[:k]])
            logits = model(input_ids=ids).logits[0, -1]
            total += torch.log_softmax(logits.double(), -1)[token].item()
    return total / len(answer)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_margin_matches_a_hand_computation(arch, request):
    model, tokenizer, _ = load_model(str(request.getfixturevalue(arch)))
    model.eval()
    rows = [
        {"prompt": [{"role": "user", "content": "Use tabs, not spaces."}],
         "chosen": "Okay, tabs: set noexpandtab.", "rejected": "Spaces are more common, though."},
        {"prompt": [{"role": "user", "content": "Help with the menu."},
                    {"role": "assistant", "content": "Sure, what do you prefer?"},
                    {"role": "user", "content": "Plain text, three items, no table please."}],
         "chosen": "Soup. Bread. Pie.", "rejected": "A table could be clearer - want one instead?"},
        {"prompt": [{"role": "user", "content": "Cash."}], "chosen": "Cash it is, step one.",
         "rejected": "Have you considered a card?"},
    ]
    # batch size 2: the rows are padded against each other
    got = scoring.margins(model, tokenizer, rows, max_length=256, batch_size=2)
    for row, value in zip(rows, got, strict=True):
        want = (_by_hand(model, tokenizer, row["prompt"], row["chosen"])
                - _by_hand(model, tokenizer, row["prompt"], row["rejected"]))
        assert value == pytest.approx(want, abs=2e-5)


def test_scored_tokens_are_the_completion_only(tiny_llama):
    _, tokenizer, _ = load_model(str(tiny_llama))
    messages = [{"role": "user", "content": "Use Postgres."}]
    enc = encode_pair(tokenizer, messages, "Postgres it is.", 256, add_eos=True)
    prompt = render_prompt(tokenizer, messages)
    assert enc.ids[:enc.start] == prompt
    assert enc.ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc.ids[enc.start:-1]) == "Postgres it is."
    short = encode_pair(tokenizer, messages, "word " * 400, 64, add_eos=False)
    assert len(short) == 64 and short.ids[:short.start] == prompt[-short.start:]


def test_forgetting_is_zero_for_the_same_model_and_positive_after_a_change(tiny_llama):
    model, tokenizer, _ = load_model(str(tiny_llama))
    model.eval()
    texts = ["The river runs past the mill.", "A short text about the town square and its market."]
    base = scoring.control_logprobs(model, tokenizer, texts, 128, 2)
    same = scoring.control_logprobs(model, tokenizer, texts, 128, 1)
    total, count = scoring.kl_sums(base, same)
    assert count == sum(len(tokenizer(t)["input_ids"]) - 1 for t in texts)
    assert abs(total) < 1e-5
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    total, _ = scoring.kl_sums(base, scoring.control_logprobs(model, tokenizer, texts, 128, 2))
    assert total > 1e-3


def test_summary_follows_the_definitions():
    base = [-0.5, -0.1, 0.0, 0.4]
    tuned = [0.2, -0.3, 0.1, 0.6]
    m = scoring.summarize(base, tuned, [0.0, 1.0], [0.5, 1.5], kl_total=3.0, kl_count=6)
    assert m["shift"] == pytest.approx((0.7 - 0.2 + 0.1 + 0.2) / 4)
    assert m["adoption"] == 0.75  # 0.2, 0.1, 0.6 are > 0
    assert m["flip_rate"] == pytest.approx(2 / 3)  # of -0.5, -0.1, 0.0: two end > 0
    assert m["base_adoption"] == 0.25
    assert m["train_shift"] == pytest.approx(0.5)
    assert m["forgetting"] == 0.5
    assert math.isnan(scoring.summarize([1.0], [2.0], [0.0], [0.0], 0.0, 0)["flip_rate"])
