"""Search spaces as data: every shipped file loads and samples; bad files get one clear error."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml

from objectives.errors import UserError
from search_spaces import HERE, SAMPLERS, SearchSpace, load_space, shipped_spaces

GOOD = {
    "dimensions": {"n_real": {"type": "int", "low": 1, "high": 40, "log": True},
                   "dream_multiplier": {"type": "int", "low": 1, "high": 10, "log": True},
                   "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                   "batch_size": {"type": "categorical", "values": [4, 8, 16]}},
    "fixed": {"behavior": "listening", "epochs": 1},
    "sampler": {"name": "qmc", "seed": 0},
    "n_trials": 8,
    "objective": "shift",
}


def write(tmp_path, data) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_shipped_spaces_exist():
    assert {"listening-cpu", "listening-gpu", "smoke"} <= set(shipped_spaces())


@pytest.mark.parametrize("name", shipped_spaces())
def test_every_shipped_space_loads_samples_and_names_its_command(name):
    first = (HERE / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# ") and "shiftsweep sweep" in first and name in first
    space = load_space(name)
    study = optuna.create_study(directions=space.directions, sampler=space.make_sampler())
    seen = set()

    def objective(trial):
        params = space.suggest(trial)
        config = space.config(params)
        for key, dim in space.dimensions.items():
            value = getattr(config, key)
            if dim.type == "categorical":
                assert value in dim.values
            else:
                assert dim.low <= value <= dim.high
        seen.add(tuple(sorted(params.items())))
        return [0.0] * len(space.directions)

    # Inside optimize: a grid of 6 points (listening-controls) stops the study at its end.
    study.optimize(objective, n_trials=6)
    assert len(seen) == 6  # space-filling: no point drawn twice


def test_the_default_cpu_space_covers_the_transition():
    space = load_space("listening-cpu")
    dims = space.dimensions
    n_eff_low = dims["n_real"].low * dims["dream_multiplier"].low
    n_eff_high = dims["n_real"].high * dims["dream_multiplier"].high
    assert n_eff_low <= 2 and n_eff_high >= 300  # science.md: from a few to hundreds
    assert dims["lr"].high >= 1e-2 * 0.99 and dims["lr"].log
    assert space.sampler["name"] == "qmc" and space.objective == ["shift"]
    assert space.fixed.get("model", "default") == "default"


def test_qmc_spreads_the_first_trial_too():
    space = load_space("smoke")
    study = optuna.create_study(sampler=space.make_sampler())
    points = []
    for _ in range(4):
        trial = study.ask()
        points.append(space.suggest(trial)["lr"])
        study.tell(trial, 0.0)
    logs = sorted(math.log10(p) for p in points)
    # Four Sobol points over lr in [1e-4, 1e-2] (log): one in each half of the range at least.
    assert logs[0] < -3 < logs[-1]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_is_selectable(tmp_path, sampler):
    data = dict(GOOD, sampler={"name": sampler, "seed": 3})
    space = load_space(write(tmp_path, data))
    first = optuna.create_study(sampler=space.make_sampler())
    second = optuna.create_study(sampler=space.make_sampler())
    a = [first.ask() for _ in range(3)]
    b = [second.ask() for _ in range(3)]
    # Same seed in every worker: the same points (grid and QMC rely on it).
    assert [space.suggest(t) for t in a] == [space.suggest(t) for t in b]


def test_grid_uses_log_spaced_points(tmp_path):
    data = dict(GOOD, sampler={"name": "grid", "points": 3})
    space = load_space(write(tmp_path, data))
    assert space.dimensions["lr"].grid(3) == [1e-4, 1e-3, 1e-2]
    assert space.dimensions["n_real"].grid(3) == [1, 6, 40]


def test_two_objectives(tmp_path):
    space = load_space(write(tmp_path, dict(GOOD, objective=["shift", "forgetting"])))
    assert space.directions == ["maximize", "minimize"]


def _broken(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return data


@pytest.mark.parametrize("changes, key, words", [
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"dimensions__lr__bogus": 1}, "dimensions.lr.bogus", "unknown key"),
    ({"dimensions__lr__low": 1.0}, "dimensions.lr.low", "low <= high"),
    ({"dimensions__lr__low": 0.0}, "dimensions.lr.low", "> 0 for a log dimension"),
    ({"dimensions__n_real__low": "one"}, "dimensions.n_real.low", "an integer"),
    ({"dimensions__n_real__type": "range"}, "dimensions.n_real.type", "int, float or categorical"),
    ({"dimensions__lr__type": "int"}, "dimensions.lr.low", "an integer"),
    ({"dimensions__n_real__type": "float"}, "dimensions.n_real", "not float"),
    ({"dimensions__temperature": {"type": "float", "low": 0, "high": 1}},
     "dimensions.temperature", "a trial setting"),
    ({"dimensions__batch_size__values": []}, "dimensions.batch_size.values", "non-empty"),
    ({"fixed__lr": 0.1}, "fixed.lr", "not also a dimension"),
    ({"fixed__epochs": "two"}, "epochs", "int"),
    ({"fixed__colour": "red"}, "fixed.colour", "a trial setting"),
    ({"sampler__name": "cmaes"}, "sampler.name", "qmc, tpe, random, gp, grid"),
    ({"sampler__points": 3}, "sampler.points", "an option of qmc"),
    ({"n_trials": 0}, "n_trials", "an integer >= 1"),
    ({"objective": "accuracy"}, "objective", "one measure or a list of two"),
    ({"dimensions": {}}, "dimensions", "at least one"),
    ({"seeds_per_point": 0}, "seeds_per_point", "an integer >= 1"),
    ({"seeds_per_point": "three"}, "seeds_per_point", "an integer >= 1"),
    ({"seeds_per_point": True}, "seeds_per_point", "an integer >= 1"),
    ({"seeds_per_point": 3}, "n_trials", "a multiple of seeds_per_point 3"),
    ({"seeds_per_point": 2, "dimensions__seed": {"type": "categorical", "values": [0, 1]}},
     "dimensions.seed", "no seed dimension with seeds_per_point 2"),
])
def test_bad_space_files_get_one_error_naming_the_key(tmp_path, changes, key, words):
    path = write(tmp_path, _broken(**changes))
    with pytest.raises(UserError) as err:
        load_space(path)
    message = str(err.value)
    assert path in message and key in message and words in message
    assert "\n" not in message


def test_seeds_per_point_is_part_of_what_a_study_means(tmp_path):
    plain = load_space(write(tmp_path, GOOD))
    assert plain.seeds_per_point == 1 and plain.to_dict()["seeds_per_point"] == 1
    one = load_space(write(tmp_path, dict(GOOD, seeds_per_point=1)))
    assert one.fingerprint() == plain.fingerprint()
    # A study stored before the key existed keeps its fingerprint.
    old = {k: v for k, v in plain.to_dict().items() if k != "seeds_per_point"}
    assert SearchSpace.from_dict(old, source="old study").fingerprint() == plain.fingerprint()
    two = load_space(write(tmp_path, dict(GOOD, seeds_per_point=2)))
    four = load_space(write(tmp_path, dict(GOOD, seeds_per_point=4)))
    assert len({plain.fingerprint(), two.fingerprint(), four.fingerprint()}) == 3
    # The stored form (what a worker on another machine loads) keeps it.
    again = SearchSpace.from_dict(two.to_dict(), source="study x")
    assert again.seeds_per_point == 2 and again.fingerprint() == two.fingerprint()
    assert (two.n_points, two.base_seed) == (4, 0)
    assert "8 (4 points × 2 seeds, `seed` 0–1 at every point)" in two.describe()
    assert "Trials: 8." in plain.describe()
    seeded = load_space(write(tmp_path, dict(GOOD, seeds_per_point=2,
                                             fixed={**GOOD["fixed"], "seed": 5})))
    assert seeded.base_seed == 5 and "`seed` 5–6" in seeded.describe()


def test_the_gpu_space_runs_three_seeds_per_point():
    space = load_space("listening-gpu")
    assert space.seeds_per_point == 3 and "seed" not in space.dimensions
    assert space.n_trials % 3 == 0 and space.base_seed == 0


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(UserError, match="listening-cpu"):
        load_space("no-such-space")
