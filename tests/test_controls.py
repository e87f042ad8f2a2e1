"""Controls and measures beside shift: contrast probes, train_on, file dreams, the generation
check, and the registry of measures - on tiny models, against hand computations."""

import json
import math

import pytest
import torch
from conftest import behavior_extras, behavior_rows, write_behavior

from objectives import Session, TrialConfig, UserError, measures
from objectives.behavior import load_behavior, word_jaccard
from objectives.dreams import dream_overlap, file_sources, make_training_set, select_real
from objectives.models import load_model
from objectives.tokens import encode_pair


@pytest.fixture(scope="module")
def session():
    return Session()


def _config(behavior, model, **kw):
    base = dict(n_real=6, dream_multiplier=1, lr=1e-2, batch_size=6, behavior=str(behavior),
                model=str(model))
    return TrialConfig(**{**base, **kw})


def _nll_by_hand(model, tokenizer, rows):
    """Summed NLL of each completion (+ end of turn) and its token count: one unpadded
    forward per example, no logits_to_keep."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for prompt, completion in rows:
            enc = encode_pair(tokenizer, prompt, completion, 384, add_eos=True)
            logp = torch.log_softmax(model(input_ids=torch.tensor([enc.ids])).logits[0].double(), -1)
            for pos in range(enc.start, len(enc.ids)):
                total -= logp[pos - 1, enc.ids[pos]].item()
            tokens += len(enc.ids) - enc.start
    return total, tokens


@pytest.mark.parametrize("train_on", ["chosen", "rejected", "placebo"])
def test_train_on_trains_on_that_completion(session, full_behavior, tiny_llama, train_on):
    """Step 1's loss (one batch holding every example, before any update) is the base model's
    NLL of exactly the completions train_on names, computed here by hand."""
    n = 10  # placebo: the whole pool of 10
    result = session.run(_config(full_behavior, tiny_llama, n_real=n, batch_size=n,
                                 train_on=train_on))
    behavior = load_behavior(str(full_behavior))
    if train_on == "placebo":
        pairs = [(r["prompt"], r["completion"]) for r in behavior.placebo_rows()]
        assert result["training_set"]["placebo_distinct"] == n
    else:
        by_id = {r["id"]: r for r in behavior.train_rows()}
        pairs = [(by_id[i]["prompt"], by_id[i][train_on]) for i in result["training_set"]["real_ids"]]
    model, tokenizer, _ = load_model(str(tiny_llama))
    model.eval()
    total, tokens = _nll_by_hand(model, tokenizer, pairs)
    step = result["log"][0]
    assert step["tokens"] == tokens == result["measures"]["completion_tokens"]
    assert step["loss"] == pytest.approx(total / tokens, rel=1e-4)


def test_placebo_keeps_the_trials_size_and_cycles_a_small_pool(session, full_behavior, tiny_llama):
    result = session.run(_config(full_behavior, tiny_llama, n_real=6, dream_multiplier=3,
                                 dream_strategy="repeat", batch_size=4, train_on="placebo"))
    assert result["training_set"]["examples"] == 18 == result["measures"]["n_eff"]
    assert result["measures"]["steps"] == math.ceil(18 / 4)
    assert result["training_set"]["placebo_distinct"] == 10  # the pool, cycled
    # train_shift is measured on the real examples a chosen trial of this seed would draw
    chosen = session.run(_config(full_behavior, tiny_llama, n_real=6, dream_multiplier=3,
                                 dream_strategy="repeat", batch_size=4))
    assert result["training_set"]["real_ids"] == chosen["training_set"]["real_ids"]


def test_training_on_rejected_lowers_the_margin_and_on_chosen_raises_it(session, tiny_behavior,
                                                                        tiny_llama):
    kw = dict(n_real=6, batch_size=2, epochs=4, lr=2e-2)
    up = session.run(_config(tiny_behavior, tiny_llama, **kw))["measures"]["train_shift"]
    down = session.run(_config(tiny_behavior, tiny_llama, train_on="rejected", **kw)
                       )["measures"]["train_shift"]
    assert down < -0.05 < 0.05 < up


def test_contrast_measures_follow_their_definition(session, tmp_path, tiny_llama):
    """With contrast.jsonl a copy of the probes, contrast_shift must equal shift; and both
    contrast measures must follow from the per-row margins the trial records."""
    rows = behavior_rows()
    rows["contrast"] = [dict(r, scenario=f"c-{r['scenario']}") for r in rows["probes"]]
    folder = write_behavior(tmp_path / "mirror", rows)
    result = session.run(_config(folder, tiny_llama, batch_size=2))
    m = result["measures"]
    assert m["contrast_shift"] == pytest.approx(m["shift"], abs=1e-6)
    base = [r["base_margin"] for r in result["contrast"]]
    tuned = [r["margin"] for r in result["contrast"]]
    assert m["contrast_shift"] == pytest.approx(sum(t - b for b, t in zip(base, tuned, strict=True))
                                                / len(base))
    assert m["contrast_adoption"] == sum(t > 0 for t in tuned) / len(tuned)
    assert m["contrast_base_adoption"] == sum(b > 0 for b in base) / len(base)
    assert m["shift"] != 0.0


def test_contrast_measures_are_undefined_without_contrast_probes(session, tiny_behavior, tiny_llama):
    m = session.run(_config(tiny_behavior, tiny_llama, n_real=2))["measures"]
    assert math.isnan(m["contrast_shift"]) and math.isnan(m["contrast_adoption"])


# --- file dreams ---------------------------------------------------------------------------------


def test_file_dreams_count_nesting_and_overlap(full_behavior):
    behavior = load_behavior(str(full_behavior))
    written = behavior.dream_rows()
    sources = file_sources(behavior.train_rows(), written)
    assert [s["id"] for s in sources] == [f"s{i}" for i in range(6)]
    real = select_real(sources, 4, seed=1)
    small = make_training_set(real, 3, "file", 1, [], written=written)
    large = make_training_set(real, 5, "file", 1, [], written=written)
    assert len(small) == 4 * 3 and len(large) == 4 * 5
    for rows in (small, large):
        for row in rows:
            if row["kind"] == "variation":
                assert row["source"] == real[row["origin"]]["id"]  # its own source's variations
    pick = lambda rows: [(r["origin"], r["id"]) for r in rows if r["kind"] == "variation"]  # noqa: E731
    assert set(pick(small)) <= set(pick(large)), "a larger m contains a smaller one"
    other_seed = make_training_set(real, 3, "file", 2, [], written=written)
    assert pick(other_seed) != pick(small)
    by_id = {r["id"]: r for r in written}
    want = [word_jaccard(by_id[i]["chosen"], real[o]["chosen"]) for o, i in pick(small)]
    assert dream_overlap(small) == pytest.approx(sum(want) / len(want))
    assert dream_overlap(make_training_set(real, 3, "repeat", 1, [])) == 1.0
    assert dream_overlap(make_training_set(real, 1, "file", 1, [], written=written)) is None


def test_file_dreams_too_few_variations_is_a_clear_error(full_behavior, session, tiny_llama):
    behavior = load_behavior(str(full_behavior))
    real = select_real(file_sources(behavior.train_rows(), behavior.dream_rows()), 2, seed=0)
    with pytest.raises(UserError, match=r"dreams.jsonl has 4 variations of train id 's\d' "
                                        r"\(needs 5\)"):
        make_training_set(real, 6, "file", 0, [], written=behavior.dream_rows())
    with pytest.raises(UserError, match="variations of only 6 train rows"):
        session.run(_config(full_behavior, tiny_llama, n_real=7, dream_strategy="file"))


def test_a_file_trial_draws_its_real_examples_from_the_sources(session, full_behavior, tiny_llama):
    result = session.run(_config(full_behavior, tiny_llama, n_real=3, dream_multiplier=4,
                                 dream_strategy="file", batch_size=4))
    assert set(result["training_set"]["real_ids"]) <= {f"s{i}" for i in range(6)}
    assert result["training_set"]["variation"] == 9
    assert 0 < result["measures"]["dream_overlap"] < 1


def test_dreams_must_name_a_train_row_and_stay_held_out(tmp_path):
    rows = behavior_rows()
    extras = behavior_extras(rows)
    bad = [dict(extras["dreams"][0], source="nope")]
    folder = write_behavior(tmp_path / "a", {**rows, "dreams": bad})
    with pytest.raises(UserError, match=r"dreams.jsonl:1: field 'source' 'nope' is not an id"):
        load_behavior(str(folder))
    leak = [dict(extras["dreams"][0], prompt=rows["probes"][0]["prompt"])]
    folder = write_behavior(tmp_path / "b", {**rows, "dreams": leak})
    with pytest.raises(UserError, match=r"dreams.jsonl:1: field 'prompt' repeats the held-out"):
        load_behavior(str(folder))


# --- the generation check ------------------------------------------------------------------------


def test_embedding_judge_matches_sentence_transformers():
    """Cosines pinned from sentence-transformers 6.2.0's SentenceTransformer on the same model
    (normalize_embeddings=True), computed once outside this project."""
    from objectives.judge import embed, judge

    texts = ["Use Postgres for the job queue.", "Water the tomatoes every morning before work.",
             "A queue in Redis handles retries better."]
    v = embed(texts)
    assert float(v[0] @ v[1]) == pytest.approx(0.1825890690, abs=1e-5)
    assert float(v[0] @ v[2]) == pytest.approx(0.4135358632, abs=1e-5)
    verdict = judge([texts[0]], [texts[2]], [texts[1]])[0]
    assert verdict["adopted"] and verdict["sim_chosen"] == pytest.approx(0.4135358632, abs=1e-5)


def test_gen_adoption_is_recorded_with_the_answers(session, tiny_behavior, tiny_llama):
    result = session.run(_config(tiny_behavior, tiny_llama, n_real=2, batch_size=2,
                                 gen_probes=3, gen_max_new_tokens=6))
    gens = result["generations"]
    assert len(gens) == 3 and all(isinstance(g["tuned"]["answer"], str) for g in gens)
    m = result["measures"]
    assert m["gen_adoption"] == sum(g["tuned"]["adopted"] for g in gens) / 3
    assert m["gen_base_adoption"] == sum(g["base"]["adopted"] for g in gens) / 3
    margin = {p["id"]: p["margin"] for p in result["probes"]}
    assert m["gen_agreement"] == sum(g["tuned"]["adopted"] == (margin[g["id"]] > 0)
                                     for g in gens) / 3


# --- the registry --------------------------------------------------------------------------------


def test_every_measure_is_in_the_cli_table_and_the_trial_record(session, full_behavior, tiny_llama):
    from study.cli import format_results

    result = session.run(_config(full_behavior, tiny_llama, n_real=2, dream_multiplier=2,
                                 dream_strategy="file", batch_size=2, gen_probes=2,
                                 gen_max_new_tokens=4))
    assert set(result["measures"]) >= set(measures.NAMES)
    table = format_results([{"status": "complete", "seed": 0, **result}])
    for m in measures.MEASURES:
        line = next(line for line in table.splitlines() if line.startswith(m.label + " "))
        value = result["measures"][m.name]
        assert line.split()[-1] == m.format(value), m.name
    json.dumps(result["measures"])  # plain numbers


def test_registry_names_directions_and_objectives():
    from search_spaces import OBJECTIVES

    assert OBJECTIVES is measures.OBJECTIVES
    assert OBJECTIVES["shift"] == "maximize" and OBJECTIVES["forgetting"] == "minimize"
    assert {"contrast_shift", "contrast_adoption", "gen_adoption"} <= set(OBJECTIVES)
    assert {"forgetting"} == measures.MINIMIZED
    assert len(set(measures.NAMES)) == len(measures.MEASURES)
    assert measures.get("shift").format(float("nan")) == "n/a"


def test_a_placebo_trial_builds_no_dreams(session, full_behavior, tiny_llama):
    """file dreams with too few variations (4 per source, m = 6) fail a chosen trial, not a
    placebo one: a placebo trial needs only the count n_eff."""
    kw = dict(n_real=2, dream_multiplier=6, dream_strategy="file", batch_size=4)
    with pytest.raises(UserError, match="needs 5"):
        session.run(_config(full_behavior, tiny_llama, **kw))
    result = session.run(_config(full_behavior, tiny_llama, train_on="placebo", **kw))
    assert result["training_set"]["examples"] == 12 and result["training_set"]["variation"] == 0
    assert math.isnan(result["measures"]["dream_overlap"])


def test_a_sweep_checks_every_control_and_objective_before_it_starts(tiny_behavior, tmp_path,
                                                                      capsys):
    """placebo is the middle value of train_on: the corners alone would not check it."""
    from study.cli import main

    space = tmp_path / "controls.yaml"
    space.write_text(
        "dimensions:\n  train_on: {type: categorical, values: [chosen, placebo, rejected]}\n"
        f"fixed: {{behavior: {tiny_behavior}, model: tiny-random}}\nn_trials: 3\n")
    assert main(["sweep", "--space", str(space), "--workers", "0"]) == 2
    assert "placebo.jsonl is missing" in capsys.readouterr().err
    space.write_text(
        "dimensions:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        f"fixed: {{behavior: {tiny_behavior}, model: tiny-random}}\nn_trials: 3\n"
        "objective: contrast_shift\n")
    assert main(["sweep", "--space", str(space), "--workers", "0"]) == 2
    assert "objective contrast_shift: " in capsys.readouterr().err
