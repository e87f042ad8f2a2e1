"""Trials in this process, on tiny models: the fine-tune, the adapter reset, the records."""

import math

import pytest

from objectives import Session, TrialConfig, UserError
from objectives.finetune import global_batches
from objectives.models import fingerprint, load_model, lora_target_modules


@pytest.fixture(scope="module")
def session():
    return Session()


def _config(behavior, model, **kw):
    base = dict(n_real=6, dream_multiplier=3, lr=1e-2, batch_size=4, behavior=str(behavior),
                model=str(model))
    return TrialConfig(**{**base, **kw})


def test_lora_targets_are_detected_per_architecture(tiny_llama, tiny_gpt2):
    llama, _, _ = load_model(str(tiny_llama))
    gpt2, _, _ = load_model(str(tiny_gpt2))
    assert lora_target_modules(llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora_target_modules(gpt2) == ["c_attn", "c_proj"]


def test_global_batches_cover_every_example_once_per_epoch():
    plan = global_batches(10, 4, epochs=2, seed=0)
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2]
    for epoch in (plan[:3], plan[3:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(10))
    assert plan[:3] != plan[3:], "each epoch is shuffled anew"


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_trial_measures_and_steps(session, tiny_behavior, arch, request):
    config = _config(tiny_behavior, request.getfixturevalue(arch), epochs=2)
    result = session.run(config)
    m = result["measures"]
    assert m["n_eff"] == 18 and m["steps"] == 2 * math.ceil(18 / 4) == len(result["log"])
    assert {k: result["training_set"][k] for k in ("real", "variation", "copy", "examples")} == {
        "real": 6, "variation": 12, "copy": 0, "examples": 18}
    assert len(result["probes"]) == 8 and len(result["train_examples"]) == 6
    for key in ("shift", "adoption", "train_shift", "forgetting", "margin", "base_margin"):
        assert math.isfinite(m[key]), key
    # measures agree with the per-probe margins they summarize
    deltas = [p["margin"] - p["base_margin"] for p in result["probes"]]
    assert m["shift"] == pytest.approx(sum(deltas) / len(deltas))
    assert m["forgetting"] > 0
    # at lr 1e-2 the trained completions gain probability: the loss falls, train_shift > 0
    assert result["log"][-1]["loss"] < result["log"][0]["loss"]
    assert m["train_shift"] > 0


def test_adapter_is_removed_after_each_trial(session, tiny_behavior, tiny_llama):
    session.run(_config(tiny_behavior, tiny_llama, n_real=2, dream_multiplier=1))
    before = fingerprint(session.model)
    first = session.run(_config(tiny_behavior, tiny_llama, seed=5))
    assert fingerprint(session.model) == before
    assert not any("lora" in name for name, _ in session.model.named_modules())
    again = session.run(_config(tiny_behavior, tiny_llama, seed=5))
    assert again["measures"] == first["measures"], "same seed, same base: same trial"


def test_full_finetune_restores_the_base_weights(session, tiny_behavior, tiny_llama):
    session.run(_config(tiny_behavior, tiny_llama, n_real=2, dream_multiplier=1))
    before = fingerprint(session.model)
    result = session.run(_config(tiny_behavior, tiny_llama, finetune="full", lr=1e-3))
    assert result["measures"]["forgetting"] > 0
    assert fingerprint(session.model) == before


def test_micro_batches_and_accumulation_give_the_same_steps(session, tiny_behavior, tiny_gpt2):
    one = session.run(_config(tiny_behavior, tiny_gpt2, batch_size=6, micro_batch_size=6))
    three = session.run(_config(tiny_behavior, tiny_gpt2, batch_size=6, micro_batch_size=2))
    assert len(one["log"]) == len(three["log"]) == 3
    for a, b in zip(one["log"], three["log"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert one["measures"]["shift"] == pytest.approx(three["measures"]["shift"], abs=1e-4)


def test_base_scores_are_cached_on_disk(tiny_behavior, tiny_llama, tmp_path):
    import storage

    config = _config(tiny_behavior, tiny_llama, n_real=2, dream_multiplier=1)
    Session().run(config)
    files = list((storage.cache_dir() / "base").glob("*.json"))
    assert len(files) == 1
    fresh = Session()
    result = fresh.run(config)
    assert result["timings"]["base_score_s"] < 5
    assert [p["base_margin"] for p in result["probes"]] == pytest.approx(
        [p["base_margin"] for p in Session().run(config)["probes"]])


def test_n_probes_is_the_same_subset_in_every_trial(session, tiny_behavior, tiny_llama):
    a = session.run(_config(tiny_behavior, tiny_llama, n_probes=3, seed=0))
    b = session.run(_config(tiny_behavior, tiny_llama, n_probes=3, seed=1))
    assert [p["line"] for p in a["probes"]] == [p["line"] for p in b["probes"]]
    assert len(a["probes"]) == 3


def test_model_dream_strategy_samples_variations(session, tiny_behavior, tiny_llama):
    result = session.run(_config(tiny_behavior, tiny_llama, n_real=2, dream_multiplier=3,
                                 dream_strategy="model", max_length=128))
    counts = result["training_set"]
    assert (counts["real"], counts["variation"], counts["copy"]) == (2, 4, 0)
    assert (counts["dream_generated"], counts["dream_reused"]) == (4, 0)
    # a second trial with the same seed reuses the cached variations: nothing is generated
    again = session.run(_config(tiny_behavior, tiny_llama, n_real=2, dream_multiplier=3,
                                dream_strategy="model", max_length=128, lr=2e-3))
    assert (again["training_set"]["dream_generated"], again["training_set"]["dream_reused"]) == (0, 4)
    # a larger multiplier keeps the cached four and generates only the missing two
    more = session.run(_config(tiny_behavior, tiny_llama, n_real=2, dream_multiplier=4,
                               dream_strategy="model", max_length=128))
    assert (more["training_set"]["dream_generated"], more["training_set"]["dream_reused"]) == (2, 4)


def test_bad_lora_targets_are_a_user_error(session, tiny_behavior, tiny_llama):
    with pytest.raises(UserError, match="lora_target_modules"):
        session.run(_config(tiny_behavior, tiny_llama, lora_target_modules=["nope"]))
    # the session is still usable afterwards
    assert session.run(_config(tiny_behavior, tiny_llama, n_real=2))["measures"]["steps"] == 2


def test_fingerprint_hashes_the_weights_bytes(tiny_llama):
    import torch

    model, _, _ = load_model(str(tiny_llama))
    again, _, _ = load_model(str(tiny_llama))
    assert fingerprint(model) == fingerprint(again), "the same weights: the same fingerprint"
    with torch.no_grad():
        # swapping two weights keeps every tensor's sum and sum of squares: a summary misses it
        w = model.model.layers[0].mlp.up_proj.weight
        a, b = w[0, 0].item(), w[0, 1].item()
        w[0, 0], w[0, 1] = b, a
    assert fingerprint(model) != fingerprint(again)


def test_a_failed_model_load_leaves_the_session_usable(tiny_behavior, tiny_llama, tmp_path):
    import shutil

    broken = tmp_path / "no-weights"
    broken.mkdir()
    for item in tiny_llama.iterdir():  # the config and tokenizer, but no weights file
        if not item.name.endswith(".safetensors"):
            shutil.copy(item, broken / item.name)
    session = Session()
    first = session.run(_config(tiny_behavior, tiny_llama, n_real=2, dream_multiplier=1))
    with pytest.raises(UserError, match="no-weights"):
        session.run(_config(tiny_behavior, broken, n_real=2, dream_multiplier=1))
    again = session.run(_config(tiny_behavior, tiny_llama, n_real=2, dream_multiplier=1))
    assert again["measures"] == first["measures"]
    with pytest.raises(UserError, match="no-weights"):  # retried, not remembered as loaded
        session.run(_config(tiny_behavior, broken, n_real=2, dream_multiplier=1))


def test_trial_runs_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import time

    from study.cli import new_trial_folder

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-120000")  # one second
    configs = [TrialConfig(seed=3)]
    taken = tmp_path / "20260101-120000-n6-m1-lr0.0001-bs8-seed3"
    taken.mkdir()
    (taken / "result.json").write_text("{}")  # someone's recorded trial
    first, second = new_trial_folder(tmp_path, configs), new_trial_folder(tmp_path, configs)
    assert len({first, second, taken}) == 3 and first.is_dir() and second.is_dir()
    assert (taken / "result.json").read_text() == "{}" and not list(first.iterdir())
    two = new_trial_folder(tmp_path, [TrialConfig(seed=0), TrialConfig(seed=1)])
    assert two.name.endswith("-seed0-1")
