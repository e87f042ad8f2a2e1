"""The fine-tune loop on tiny models: schedules, the logged lr, divergence, optimizers."""

from __future__ import annotations

import pytest
from accelerate import Accelerator

from objectives.config import TrialConfig
from objectives.finetune import train
from objectives.models import load_model


def _rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Use tabs in file {i}."}],
             "completion": f"Okay, tabs in file {i}: done."} for i in range(n)]


def _train(model_path, **settings):
    model, tokenizer, _ = load_model(str(model_path))
    config = TrialConfig(**{"n_real": 8, "batch_size": 2, "lr": 1e-3, **settings})
    return train(model, tokenizer, _rows(config.n_eff), config, Accelerator(cpu=True))


def test_the_logged_lr_is_the_one_each_step_used(tiny_gpt2):
    # linear decay over 4 steps: the steps use lr * (1, 3/4, 1/2, 1/4); the scheduler's
    # value after step k (what used to be logged) is the next step's
    log = _train(tiny_gpt2, lr_schedule="linear")
    assert [r["lr"] for r in log] == pytest.approx([1e-3 * f for f in (1, 0.75, 0.5, 0.25)])


def test_warmup_steps_warm_up_the_constant_schedule(tiny_gpt2):
    # warmup_steps 2 under the default constant schedule: 0, 1/2, then lr (transformers'
    # linear warmup starts at 0); warmup_steps was silently ignored before
    log = _train(tiny_gpt2, warmup_steps=2)
    assert [r["lr"] for r in log] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    assert [r["lr"] for r in _train(tiny_gpt2)] == pytest.approx([1e-3] * 4)
