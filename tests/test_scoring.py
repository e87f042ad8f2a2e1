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


def _kl_by_hand(base, tuned, tokenizer, texts):
    """Mean per-token KL(p_base || p_tuned): one unpadded forward per text and model, the
    explicit sum of p_base * (log p_base - log p_tuned) in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            b = torch.log_softmax(base(input_ids=ids).logits[0, :-1].double(), -1)
            t = torch.log_softmax(tuned(input_ids=ids).logits[0, :-1].double(), -1)
            total += float((b.exp() * (b - t)).sum())
            count += ids.shape[1] - 1
    return total / count


CONTROL = ["The river runs past the mill.", "A short text about the town square and its market.",
           "Market day is held every week, rain or shine, by the old stone bridge.",
           "Bread."]


@pytest.mark.parametrize("logits_bytes", [None, 1])  # 1: one text per forward
def test_forgetting_with_the_adapter_disabled_matches_a_kept_base_copy(tiny_gpt2, logits_bytes):
    import copy

    from peft import LoraConfig, get_peft_model

    model, tokenizer, _ = load_model(str(tiny_gpt2))
    model.eval()
    base = copy.deepcopy(model)
    torch.manual_seed(0)
    # init_lora_weights=False: random A and B, so the adapter changes the model
    tuned = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    total, count = scoring.control_kl(tuned, tuned.disable_adapter, tokenizer, CONTROL, 128, 3,
                                      logits_bytes=logits_bytes)
    assert count == sum(len(tokenizer(t)["input_ids"]) - 1 for t in CONTROL)
    want = _kl_by_hand(base, tuned, tokenizer, CONTROL)
    assert want > 1e-3, "the adapter changed the model"
    assert total / count == pytest.approx(want, abs=1e-5)
    # an adapter that adds nothing (B = 0, peft's default start): no forgetting
    fresh = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["c_attn"]))
    zero, _ = scoring.control_kl(fresh, fresh.disable_adapter, tokenizer, CONTROL, 128, 3)
    assert abs(zero) < 1e-6


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_a_trials_forgetting_matches_a_kept_base_copy(tiny_llama, tiny_behavior, finetune):
    """The session's forgetting pass (LoRA: adapter off; full: base weights swapped in)
    against a deep copy of the base model, after a change to the trained weights."""
    import copy

    from objectives import Session, TrialConfig
    from objectives.models import fingerprint
    from objectives.trial import _control_texts

    config = TrialConfig(model=str(tiny_llama), behavior=str(tiny_behavior), finetune=finetune,
                         score_batch_size=4)
    session = Session()
    session._ensure_model(config.model)
    base = copy.deepcopy(session.model)
    behavior = session._behavior(config.behavior)
    texts = _control_texts(behavior, config)
    torch.manual_seed(0)
    with session._trainable(config) as (tuned, as_base):
        with torch.no_grad():
            for p in tuned.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
        total, count = session._forgetting(tuned, as_base, behavior, config)
        want = _kl_by_hand(base, tuned, session.tokenizer, texts)
        assert want > 1e-3
        assert total / count == pytest.approx(want, abs=1e-5)
        # inside the pass the tuned weights were only pointed away from, not overwritten
        assert _kl_by_hand(base, tuned, session.tokenizer, texts) == pytest.approx(want, abs=1e-12)
    assert fingerprint(session.model) == fingerprint(base)


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
