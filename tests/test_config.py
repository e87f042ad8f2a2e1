import math

import pytest

from objectives import TrialConfig, UserError


def test_n_eff_and_steps_follow_the_definitions():
    config = TrialConfig(n_real=6, dream_multiplier=10, batch_size=8, epochs=3)
    assert config.n_eff == 60
    assert config.steps == 3 * math.ceil(60 / 8)


@pytest.mark.parametrize(("data", "needle"), [
    ({"n_reel": 3}, "unknown setting 'n_reel'"),
    ({"lr": "fast"}, "lr: expected a number"),
    ({"n_real": 2.5}, "n_real: expected an integer"),
    ({"n_real": True}, "n_real: expected an integer"),
    ({"dream_strategy": "dream"}, "dream_strategy: expected one of 'template', 'file', 'model', 'repeat'"),
    ({"lora_target_modules": "q_proj"}, "lora_target_modules: expected a list"),
    ({"n_real": 0}, "n_real: expected an integer >= 1"),
    ({"lr": -1e-4}, "lr: expected a number > 0"),
    ({"lr": float("nan")}, "lr: expected a number > 0"),
    ({"lora_dropout": 1.0}, "lora_dropout: expected a number in [0, 1)"),
    ({"n_probes": 0}, "n_probes: expected an integer >= 1"),
])
def test_bad_settings_name_the_setting(data, needle):
    with pytest.raises(UserError, match=None) as err:
        TrialConfig.from_dict(data, source="flags")
    assert needle in str(err.value)


def test_round_trip_keeps_every_setting():
    config = TrialConfig(n_real=3, lr=3e-3, lora_target_modules=["q_proj"], n_probes=5)
    assert TrialConfig.from_dict(config.to_dict()) == config
