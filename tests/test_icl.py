"""The in-context baseline: augmented prompts, their margins, and the ICL study's contract."""

from __future__ import annotations

import argparse
import json
import shutil

import optuna
import pytest

from objectives import scoring
from objectives.behavior import load_behavior
from objectives.dreams import select_real
from objectives.errors import UserError
from objectives.icl import fit_max_length, icl_demos, icl_margins, icl_prompt, sequence_lengths
from objectives.models import load_model
from study.icl import add_arguments, cmd_icl, parse_ks, real_pool


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _study(url: str, name: str) -> optuna.Study:
    import storage

    return optuna.load_study(study_name=name, storage=storage.open_storage(url))


def test_icl_prompt_is_the_demos_as_prior_turns_then_the_probe():
    demos = [
        {"prompt": [{"role": "user", "content": "Use tabs."}], "chosen": "Tabs it is.",
         "rejected": "Spaces?"},
        {"prompt": [{"role": "user", "content": "Help with the menu."},
                    {"role": "assistant", "content": "What do you prefer?"},
                    {"role": "user", "content": "Plain text."}],
         "chosen": "Soup. Bread.", "rejected": "A table instead?"},
    ]
    probe = [{"role": "user", "content": "Pay in cash."}]
    got = icl_prompt(demos, probe)
    assert got == [
        {"role": "user", "content": "Use tabs."}, {"role": "assistant", "content": "Tabs it is."},
        {"role": "user", "content": "Help with the menu."},
        {"role": "assistant", "content": "What do you prefer?"},
        {"role": "user", "content": "Plain text."}, {"role": "assistant", "content": "Soup. Bread."},
        {"role": "user", "content": "Pay in cash."}]
    assert all("Spaces?" not in m["content"] and "table" not in m["content"] for m in got)
    alone = icl_prompt([], probe)
    assert alone == probe and alone is not probe
    got[0]["content"] = "changed"
    assert demos[0]["prompt"][0]["content"] == "Use tabs."  # the rows are not aliased


def test_icl_margins_at_k0_are_the_plain_margins_and_demos_move_them(tiny_llama, tiny_behavior):
    model, tokenizer, _ = load_model(str(tiny_llama))
    model.eval()
    behavior = load_behavior(str(tiny_behavior))
    probes = behavior.probe_rows()
    length = fit_max_length(model, tokenizer, probes, [])
    plain = scoring.margins(model, tokenizer, probes, length, 3)
    assert icl_margins(model, tokenizer, probes, [], length, 3) == pytest.approx(plain, abs=1e-6)

    demos = icl_demos(behavior.train_rows(), 2, 0)
    long = fit_max_length(model, tokenizer, probes, demos)
    assert long > length
    with_demos = icl_margins(model, tokenizer, probes, demos, long, 3)
    by_hand = [dict(p, prompt=icl_prompt(demos, p["prompt"])) for p in probes]
    assert with_demos == pytest.approx(scoring.margins(model, tokenizer, by_hand, long, 3), abs=1e-6)
    assert max(abs(a - b) for a, b in zip(with_demos, plain, strict=True)) > 1e-4


def test_the_demos_are_the_nested_draw_of_a_fine_tune(tiny_behavior):
    pool = load_behavior(str(tiny_behavior)).train_rows()
    for seed in (0, 1):
        five = icl_demos(pool, 5, seed)
        assert icl_demos(pool, 3, seed) == five[:3] == select_real(pool, 3, seed)
        assert icl_demos(pool, 0, seed) == []
    assert [r["id"] for r in icl_demos(pool, 5, 0)] != [r["id"] for r in icl_demos(pool, 5, 1)]
    with pytest.raises(UserError, match="only 24 examples"):
        icl_demos(pool, 25, 0)


def test_a_prompt_is_never_cut(tiny_llama, tiny_behavior):
    model, tokenizer, _ = load_model(str(tiny_llama))
    behavior = load_behavior(str(tiny_behavior))
    probes = behavior.probe_rows()
    demos = icl_demos(behavior.train_rows(), 4, 0)
    need = fit_max_length(model, tokenizer, probes, demos)
    rows = [dict(p, prompt=icl_prompt(demos, p["prompt"])) for p in probes]
    assert need == max(sequence_lengths(tokenizer, rows))
    with pytest.raises(UserError, match=f"needs {need} tokens but max_length is {need - 1}"):
        icl_margins(model, tokenizer, probes, demos, need - 1, 4)
    model.config.max_position_embeddings = need - 1
    with pytest.raises(UserError, match=f"--k 4: .* need {need} tokens, more than the model's "
                                        f"context of {need - 1}"):
        fit_max_length(model, tokenizer, probes, demos)


def test_cmd_icl_writes_one_contract_trial_per_k_and_seed(tiny_llama, tiny_behavior, tmp_path,
                                                         capsys):
    from study.analysis.data import load_study_data

    url = f"sqlite:///{tmp_path / 'icl.db'}"
    argv = ["--k", "3,0,1", "--seeds", "0", "1", "--behavior", str(tiny_behavior),
            "--model", str(tiny_llama), "--storage", url, "--batch-size", "4"]
    assert cmd_icl(_args(*argv)) == 0
    out = capsys.readouterr().out
    assert "0 done, 6 to score" in out and out.count("icl k=") == 6

    study = _study(url, "tiny-icl")
    data = load_study_data(study)
    assert sorted((t.n_real, t.seed) for t in data.trials) == [(k, s) for k in (0, 1, 3)
                                                               for s in (0, 1)]
    behavior = load_behavior(str(tiny_behavior))
    assert data.probe_ids == [p["id"] for p in behavior.probe_rows()]
    assert study.user_attrs["kind"] == "icl"
    for t in data.trials:
        assert (t.n_eff, t.dream_multiplier, t.lr, t.steps, t.dream_strategy, t.train_on) == (
            t.n_real, 1, 0.0, 0, "none", "icl")
        assert t.attrs["kind"] == "icl" and t.forgetting is None
        assert t.shift == pytest.approx(float((t.margins - data.base_margins).mean()))
        assert t.attrs["adoption"] == data.adopted(t) / len(data.probe_ids)
    zero = data.select(n_real=0)
    assert all(t.shift == 0.0 and list(t.margins) == list(data.base_margins) for t in zero)
    assert any(abs(t.shift) > 1e-6 for t in data.select(n_real=3))

    # the demos are those a fine-tune of n_real = k, same seed, trains on; stored margins are
    # the margins under them
    pool = behavior.train_rows()
    model, tokenizer, _ = load_model(str(tiny_llama))
    model.eval()
    for t in data.select(n_real=3):
        demos = select_real(pool, 3, t.seed)
        assert t.attrs["real_ids"] == [r["id"] for r in demos]
        one = data.select(n_real=1, seed=t.seed)[0]
        assert one.attrs["real_ids"] == t.attrs["real_ids"][:1]
        want = icl_margins(model, tokenizer, behavior.probe_rows(), demos,
                           t.attrs["max_length"], 4)
        assert list(t.margins) == pytest.approx(want, abs=1e-5)
    trial = study.get_trials()[0]
    assert set(trial.params) == {"k"} and trial.value == trial.user_attrs["shift"]

    # a rerun adds nothing; a wider one adds only the new pairs
    assert cmd_icl(_args(*argv)) == 0
    assert "6 done, 0 to score" in capsys.readouterr().out
    assert len(_study(url, "tiny-icl").get_trials()) == 6
    assert cmd_icl(_args(*argv[:3], "0", "1", "2", *argv[5:])) == 0
    assert "6 done, 3 to score" in capsys.readouterr().out
    assert len(load_study_data(_study(url, "tiny-icl")).trials) == 9


def test_n_probes_is_the_fixed_subset_trials_score(tiny_llama, tiny_behavior, tmp_path):
    from objectives.trial import _fixed_subset

    url = f"sqlite:///{tmp_path / 'icl.db'}"
    assert cmd_icl(_args("--k", "0,1", "--seeds", "0", "--behavior", str(tiny_behavior),
                         "--model", str(tiny_llama), "--storage", url, "--n-probes", "3",
                         "--study", "sub")) == 0
    probes = load_behavior(str(tiny_behavior)).probe_rows()
    ids = _study(url, "sub").user_attrs["probe_ids"]
    assert ids == [p["id"] for p in _fixed_subset(probes, 3, "probes")]
    assert len(ids) == 3 and len(_study(url, "sub").get_trials()) == 2
    # the same study with other probes is refused, not mixed
    with pytest.raises(UserError, match="probe_ids 3 probes, this run has 8 probes"):
        cmd_icl(_args("--k", "0,3", "--seeds", "0", "--behavior", str(tiny_behavior),
                      "--model", str(tiny_llama), "--storage", url, "--study", "sub"))


def test_a_k_beyond_the_context_fails_before_scoring_anything(tiny_llama, tiny_behavior, tmp_path):
    folder = tmp_path / "short-context"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 200
    (folder / "config.json").write_text(json.dumps(config))
    url = f"sqlite:///{tmp_path / 'icl.db'}"
    with pytest.raises(UserError, match=r"--k 20: 20 in-context examples and a probe need \d+ "
                                        r"tokens, more than the model's context of 200"):
        cmd_icl(_args("--k", "0,20", "--seeds", "0", "--behavior", str(tiny_behavior),
                      "--model", str(folder), "--storage", url))
    assert _study(url, "tiny-icl").get_trials() == []


def test_bad_flags_and_foreign_studies_are_clear_errors(tiny_behavior, full_behavior, tmp_path):
    from study.analysis.data import write_trial

    assert parse_ks("5, 0,1,1") == [0, 1, 5]
    with pytest.raises(UserError, match="--k 1,x: expected a comma list of integers >= 0"):
        parse_ks("1,x")
    with pytest.raises(UserError, match="-2 is negative"):
        parse_ks("0,-2")
    url = f"sqlite:///{tmp_path / 'icl.db'}"
    with pytest.raises(UserError, match=r"--k 25: the behavior has only 24 examples in train.jsonl"):
        cmd_icl(_args("--k", "25", "--behavior", str(tiny_behavior), "--storage", url))

    # file dreams: demos come from the train rows with written variations, as such a fine-tune's
    full = load_behavior(str(full_behavior))
    pool, name = real_pool(full, "auto")
    assert name == "file" and [r["id"] for r in pool] == [r["id"] for r in full.train_rows()[:6]]
    assert real_pool(full, "train")[1] == "train" and len(real_pool(full, "train")[0]) == 24
    with pytest.raises(UserError, match="only 6 train rows with variations"):
        cmd_icl(_args("--k", "7", "--behavior", str(full_behavior), "--storage", url))

    import storage

    sweep = optuna.create_study(study_name="finetune", storage=storage.open_storage(url))
    sweep.set_user_attr("probe_ids", ["a"])
    write_trial(sweep, {"n_real": 2, "dream_multiplier": 1, "lr": 1e-3, "batch_size": 2,
                        "epochs": 1, "steps": 1, "seed": 0, "dream_strategy": "repeat",
                        "train_on": "chosen", "shift": 0.1, "forgetting": 0.0,
                        "probe_margins": [0.1]})
    with pytest.raises(UserError, match="--study finetune: this study is not an in-context study"):
        cmd_icl(_args("--k", "0", "--behavior", str(tiny_behavior), "--storage", url,
                      "--study", "finetune"))
    assert len(_study(url, "finetune").get_trials()) == 1
