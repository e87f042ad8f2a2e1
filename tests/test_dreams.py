import pytest
from conftest import behavior_rows, write_behavior

from objectives import UserError, load_behavior
from objectives.behavior import LeakIndex, normalize, prompt_text
from objectives.dreams import Templater, make_training_set, select_real


@pytest.fixture()
def behavior(tmp_path):
    return load_behavior(str(write_behavior(tmp_path / "b")))


def _key(row):
    return (normalize(prompt_text(row["prompt"])), normalize(row["chosen"]), normalize(row["rejected"]))


def test_real_examples_are_a_nested_seeded_draw(behavior):
    pool = behavior.train_rows()
    small, large = select_real(pool, 5, seed=3), select_real(pool, 12, seed=3)
    assert large[:5] == small
    assert select_real(pool, 12, seed=4) != large
    with pytest.raises(UserError, match=r"--n-real 99: the behavior's train\.jsonl has only 24"):
        select_real(pool, 99, seed=0)


@pytest.mark.parametrize("strategy", ["template", "repeat"])
def test_count_is_n_real_times_m(behavior, strategy):
    real = select_real(behavior.train_rows(), 6, seed=0)
    rows = make_training_set(real, 5, strategy, 0, behavior.probe_rows(), behavior.dream)
    assert len(rows) == 30
    for i in range(6):
        mine = [r for r in rows if r["origin"] == i]
        assert len(mine) == 5 and sum(r["kind"] == "real" for r in mine) == 1


def test_multiplier_one_is_the_real_examples(behavior):
    real = select_real(behavior.train_rows(), 4, seed=0)
    rows = make_training_set(real, 1, "template", 0, behavior.probe_rows())
    assert [r["kind"] for r in rows] == ["real"] * 4


def test_repeat_makes_exact_copies(behavior):
    real = select_real(behavior.train_rows(), 3, seed=0)
    rows = make_training_set(real, 4, "repeat", 0, behavior.probe_rows())
    for row in rows:
        assert _key(row) == _key(real[row["origin"]])


def test_template_is_deterministic_and_seeded(behavior):
    real = select_real(behavior.train_rows(), 6, seed=0)
    a = make_training_set(real, 6, "template", 0, behavior.probe_rows(), behavior.dream)
    b = make_training_set(real, 6, "template", 0, behavior.probe_rows(), behavior.dream)
    c = make_training_set(real, 6, "template", 1, behavior.probe_rows(), behavior.dream)
    assert [_key(r) for r in a] == [_key(r) for r in b]
    assert [_key(r) for r in a] != [_key(r) for r in c]


def test_template_variations_are_distinct_and_keep_the_behavior(behavior):
    real = select_real(behavior.train_rows(), 8, seed=0)
    rows = make_training_set(real, 8, "template", 0, behavior.probe_rows(), behavior.dream)
    keys = [_key(r) for r in rows]
    assert len(set(keys)) == len(keys), "no duplicates, not even of a real example"
    for row in rows:
        source = real[row["origin"]]
        # the same sides: the chosen answer still follows ("Okay/now uses"), rejected still asks
        assert ("now uses" in row["chosen"]) == ("now uses" in source["chosen"])
        assert "have you considered" in row["rejected"]
        assert row["prompt"][-1]["role"] == "user"
    variations = [r for r in rows if r["kind"] == "variation"]
    changed = sum(prompt_text(v["prompt"]) != prompt_text(real[v["origin"]]["prompt"]) for v in variations)
    assert changed > 0.5 * len(variations)


def test_swaps_are_consistent_across_fields():
    templater = Templater({"swaps": [["Postgres", "MySQL", "SQLite"]]})
    row = {"prompt": [{"role": "user", "content": "Use Postgres for the app."}],
           "chosen": "Postgres it is: createdb app.", "rejected": "Is Postgres really needed?"}
    import random

    rng = random.Random(1)
    seen = set()
    for _ in range(30):
        new = templater.vary(row, rng)
        names = {n for n in ("Postgres", "MySQL", "SQLite")
                 if n in new["chosen"] or n in new["rejected"] or n in new["prompt"][0]["content"]}
        assert len(names) == 1, new
        seen |= names
    assert len(seen) == 3


def test_variations_never_reproduce_a_probe(tmp_path):
    rows = behavior_rows()
    # Probes that are exactly what the templater makes of training rows with another seed.
    behavior = load_behavior(str(write_behavior(tmp_path / "b", rows)))
    real = select_real(behavior.train_rows(), 24, seed=0)
    other = make_training_set(real, 3, "template", 7, behavior.probe_rows(), behavior.dream)
    planted = [dict(r) for r in other if r["kind"] == "variation"][:12]
    rows = make_training_set(real, 10, "template", 7, planted, behavior.dream)
    index = LeakIndex([prompt_text(p["prompt"]) for p in planted])
    leaks = [r for r in rows
             if r["kind"] == "variation" and index.match(prompt_text(r["prompt"])) is not None]
    assert leaks == []
    assert len(rows) == 240


def test_exhausted_template_space_is_a_clear_error(tmp_path):
    rows = behavior_rows()
    rows["train"] = [{"prompt": "Go.", "chosen": "Going.", "rejected": "Wait."}]
    behavior = load_behavior(str(write_behavior(tmp_path / "b", rows)))
    with pytest.raises(UserError, match="template strategy found only"):
        make_training_set(behavior.train_rows(), 3000, "template", 0, behavior.probe_rows())
