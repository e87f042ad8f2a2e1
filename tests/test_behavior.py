import json
from pathlib import Path

import pytest
from conftest import behavior_rows, write_behavior

from objectives import UserError, load_behavior
from objectives.behavior import prompt_text


def _write(folder: Path, **files: str) -> Path:
    write_behavior(folder)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)
    return folder


def _error(folder: Path) -> str:
    with pytest.raises(UserError) as err:
        load_behavior(str(folder))
    return str(err.value)


def test_tiny_behavior_loads(tiny_behavior):
    behavior = load_behavior(str(tiny_behavior))
    assert len(behavior.train) == 24 and len(behavior.probes) == 8 and len(behavior.control) == 6
    first = behavior.train_rows()[0]
    assert first["prompt"] == [{"role": "user", "content": behavior_rows()["train"][0]["prompt"]}]


def test_missing_file(tmp_path):
    folder = write_behavior(tmp_path / "b")
    (folder / "probes.jsonl").unlink()
    assert "probes.jsonl: missing file" in _error(folder)


def test_not_a_behavior(tmp_path):
    with pytest.raises(UserError, match="not a built-in behavior"):
        load_behavior(str(tmp_path / "nowhere"))


def test_invalid_json_names_file_and_line(tmp_path):
    folder = write_behavior(tmp_path / "b")
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-1]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert "train.jsonl:3: not valid JSON" in _error(folder)


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda r: r.pop("chosen"), "train.jsonl:2: missing field 'chosen'"),
    (lambda r: r.pop("prompt"), "train.jsonl:2: missing field 'prompt'"),
    (lambda r: r.update(rejected=7), "train.jsonl:2: field 'rejected' must be a string, got int"),
    (lambda r: r.update(prompt=42), "train.jsonl:2: field 'prompt' must be a string or a non-empty list"),
    (lambda r: r.update(chosen="  "), "train.jsonl:2: field 'chosen' is empty"),
    (lambda r: r.update(prompt=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
     "train.jsonl:2: field 'prompt' must end with a user message"),
    (lambda r: r.update(prompt=[{"role": "robot", "content": "a"}]),
     "train.jsonl:2: field 'prompt'[0].role must be one of system, user, assistant"),
    (lambda r: r.update(rejected=r["chosen"]), "train.jsonl:2: fields 'chosen' and 'rejected' are the same"),
])
def test_bad_row_names_file_line_and_field(tmp_path, mutate, needle):
    rows = behavior_rows()
    mutate(rows["train"][1])
    folder = write_behavior(tmp_path / "b", rows)
    assert needle in _error(folder)


def test_wrong_row_type(tmp_path):
    folder = write_behavior(tmp_path / "b")
    (folder / "control.jsonl").write_text('["a list"]\n')
    assert "control.jsonl:1: expected a JSON object, got list" in _error(folder)


def test_empty_file(tmp_path):
    folder = write_behavior(tmp_path / "b")
    (folder / "control.jsonl").write_text("\n")
    assert "control.jsonl: empty file" in _error(folder)


def test_duplicate_row(tmp_path):
    rows = behavior_rows()
    rows["train"].append(dict(rows["train"][4], scenario="again"))
    folder = write_behavior(tmp_path / "b", rows)
    assert "train.jsonl:25: duplicate row (its prompt repeats line 5)" in _error(folder)


def test_duplicate_control_text(tmp_path):
    rows = behavior_rows()
    rows["control"].append(rows["control"][0])
    folder = write_behavior(tmp_path / "b", rows)
    assert "control.jsonl:7: duplicate row" in _error(folder)


def test_probe_with_a_training_scenario_id(tmp_path):
    rows = behavior_rows()
    rows["probes"][3]["scenario"] = rows["train"][10]["scenario"]
    folder = write_behavior(tmp_path / "b", rows)
    message = _error(folder)
    assert "probes.jsonl:4: field 'scenario'" in message and "train.jsonl:11" in message


def test_probe_that_rewords_a_training_prompt(tmp_path):
    rows = behavior_rows()
    rows["probes"][0] = dict(rows["train"][5], scenario="fresh-id")
    rows["probes"][0]["prompt"] = rows["train"][5]["prompt"] + " Please."
    folder = write_behavior(tmp_path / "b", rows)
    assert "probes.jsonl:1: field 'prompt' repeats the scenario of" in _error(folder)


def test_behavior_yaml_errors(tmp_path):
    folder = write_behavior(tmp_path / "b")
    (folder / "behavior.yaml").write_text("name: x\ndescription: y\nchosen: a\n")
    assert "behavior.yaml: missing field 'rejected'" in _error(folder)
    (folder / "behavior.yaml").write_text("name: x\ndescription: y\nchosen: a\nrejected: b\ncolour: red\n")
    assert "behavior.yaml: unknown key 'colour'" in _error(folder)
    (folder / "behavior.yaml").write_text(
        "name: x\ndescription: y\nchosen: a\nrejected: b\ndream:\n  swaps: [[alone]]\n")
    assert "field 'dream.swaps' must be" in _error(folder)


def test_builtin_listening_meets_the_data_contract():
    behavior = load_behavior("listening")
    train, probes = behavior.train_rows(), behavior.probe_rows()
    assert len(train) >= 300 and len(probes) >= 64 and len(behavior.control) >= 32
    train_domains = {r["domain"] for r in train}
    probe_domains = {r["domain"] for r in probes}
    assert len(train_domains) >= 12
    assert not train_domains & probe_domains, "probes must come from held-out domains"
    multi_turn = sum(1 for r in train if len(r["prompt"]) > 1)
    assert 0.05 * len(train) < multi_turn < 0.5 * len(train)
    # Not one template: prompts vary in length and in their first words.
    lengths = sorted(len(prompt_text(r["prompt"]).split()) for r in train)
    assert lengths[-1] >= 4 * lengths[0]
    openings = {" ".join(prompt_text(r["prompt"]).split()[:2]).lower() for r in train}
    assert len(openings) > 0.6 * len(train)
    # chosen is not systematically longer (more fluent) than rejected
    ratio = sum(len(r["chosen"]) for r in train) / sum(len(r["rejected"]) for r in train)
    assert 0.8 < ratio < 1.2


def test_every_shipped_behavior_loads():
    from objectives import builtin_behaviors

    names = builtin_behaviors()
    assert "listening" in names
    for name in names:
        assert load_behavior(name).fingerprint


def test_rows_keep_their_metadata(tiny_behavior):
    row = json.loads((tiny_behavior / "probes.jsonl").read_text().splitlines()[0])
    loaded = load_behavior(str(tiny_behavior)).probe_rows()[0]
    assert loaded["scenario"] == row["scenario"] and loaded["domain"] == row["domain"]
