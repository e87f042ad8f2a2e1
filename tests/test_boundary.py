"""study.analysis.boundary: the level-set sampler, the boundary estimate the plots draw, and
``stop_when: boundary_settled``, on synthetic surfaces whose boundary is known (no model
training: the objective is the surface itself)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import plotly.graph_objects as go
import pytest
from optuna.trial import TrialState

from objectives.errors import UserError
from search_spaces import SearchSpace
from study import plots
from study.analysis import boundary
from study.bench_boundary import DIMS_2D, DIMS_4D, SURFACES, Surface

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHARP = next(s for s in SURFACES if s.name == "sharp-2d")  # shift steps from 0 to 1 at n_eff 40
LR_4D = next(s for s in SURFACES if s.name == "lr-4d")


def make_space(dims: dict, sampler: str = "boundary", seed: int = 0, n_trials: int = 16,
               **extra) -> SearchSpace:
    return SearchSpace.from_dict({"name": "t", "dimensions": dims, "fixed": {"behavior": "listening"},
                                  "sampler": {"name": sampler, "seed": seed}, "n_trials": n_trials,
                                  "boundary_level": 0.5, **extra}, source="test")


def shift_of(surface: Surface, params: dict, noise: float = 0.0, rng=None) -> float:
    value = float(surface.truth({k: np.array([v], dtype=float) for k, v in params.items()})[0])
    return value + (noise * rng.standard_normal() if noise else 0.0)


def new_study(space: SearchSpace, storage=None) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=space.make_sampler(), storage=storage)
    study.set_user_attr("boundary_level", space.boundary_level)
    study.set_user_attr("objective", ["shift"])
    study.set_user_attr("search_space", space.to_dict())
    return study


def run(surface: Surface, space: SearchSpace, n: int, noise: float = 0.05, seed: int = 0,
        study=None) -> optuna.Study:
    study = study or new_study(space)
    rng = np.random.default_rng(seed)

    def objective(trial):
        params = space.suggest(trial)
        for key, value in params.items():  # what the plots read (study.sweep_worker records it)
            trial.set_user_attr(key, value)
        trial.set_user_attr("n_eff", params["n_real"] * params["dream_multiplier"])
        return shift_of(surface, params, noise, rng)

    study.optimize(objective, n_trials=n)
    return study


def distance_to_boundary(surface: Surface, params: dict) -> float:
    """|dose - log midpoint|: how far (in log units) a point is from the true boundary."""
    dose = surface.dose({k: np.array([v], dtype=float) for k, v in params.items()})[0]
    return abs(float(dose) - math.log(surface.midpoint))


# ---------------------------------------------------------------------------------------------
# the sampler


def test_after_its_start_the_sampler_puts_points_near_the_true_boundary():
    n, start = 20, boundary.n_startup(make_space(DIMS_2D).distributions())
    near, within = {}, {}
    for name in ("boundary", "qmc"):
        study = run(SHARP, make_space(DIMS_2D, name), n)
        d = np.array([distance_to_boundary(SHARP, t.params) for t in study.trials[start:]])
        near[name], within[name] = np.median(d), np.mean(d < 1.0)
    # the sharp boundary is the line n_eff = 40; the space spans ln n_eff 0 .. 6. The sampler
    # also spends points where the model is unsure far from the line (corners).
    assert within["boundary"] >= 0.5 and within["boundary"] > 1.3 * within["qmc"], within
    assert near["boundary"] < 0.7 * near["qmc"], near


def test_the_first_points_are_the_declared_space_sobol_sequence():
    space = make_space(DIMS_2D)
    start = boundary.n_startup(space.distributions())
    ours = run(SHARP, space, start)
    qmc = run(SHARP, make_space(DIMS_2D, "qmc"), start)
    assert [t.params for t in ours.trials] == [t.params for t in qmc.trials]


def test_same_seed_same_sequence_other_seed_other_sequence():
    seqs = [[t.params for t in run(SHARP, make_space(DIMS_2D, seed=s), 12).trials] for s in (3, 3, 4)]
    assert seqs[0] == seqs[1]
    assert seqs[0] != seqs[2]


def test_two_workers_sharing_a_study_get_different_points(tmp_path):
    space = make_space(DIMS_4D, n_trials=40)
    storage = f"sqlite:///{tmp_path / 'two.db'}"
    first = new_study(space, storage)
    run(LR_4D, space, boundary.n_startup(space.distributions()) + 2, study=first)
    # two workers: each its own Study object and sampler on the same storage
    a = optuna.load_study(study_name=first.study_name, storage=storage, sampler=space.make_sampler())
    b = optuna.load_study(study_name=first.study_name, storage=storage, sampler=space.make_sampler())
    for order in ("a first", "b first"):
        ta, tb = a.ask(), b.ask()  # both RUNNING before either has its point
        if order == "a first":
            pa, pb = space.suggest(ta), space.suggest(tb)  # b sees a's point
        else:
            pb, pa = space.suggest(tb), space.suggest(ta)  # b sees a RUNNING without one
        assert pa != pb, order
        a.tell(ta, shift_of(LR_4D, pa))
        b.tell(tb, shift_of(LR_4D, pb))
    # one worker alone, from the same trials, proposes the point the first worker got
    alone = optuna.load_study(study_name=first.study_name, storage=storage,
                              sampler=space.make_sampler())
    study_copy = optuna.create_study(direction="maximize", sampler=space.make_sampler())
    for key, value in alone.user_attrs.items():
        study_copy.set_user_attr(key, value)
    for t in alone.trials:
        study_copy.add_trial(t)
    again = study_copy.ask()
    assert space.suggest(again) == space.suggest(alone.ask())


def test_categorical_dimension_and_seeds_per_point():
    from study.sweep_worker import trial_config

    space = make_space(DIMS_4D, n_trials=32, seeds_per_point=2)
    study = new_study(space)
    rng = np.random.default_rng(0)

    def objective(trial):
        config = trial_config(trial, study, space)  # queues the point's second seed
        params = {k: getattr(config, k) for k in DIMS_4D}
        trial.set_user_attr("seed", config.seed)
        return shift_of(LR_4D, params, 0.1, rng)

    study.optimize(objective, n_trials=32)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    groups: dict[int, list] = {}
    for t in trials:
        groups.setdefault(t.user_attrs["replicate_of"], []).append(t)
    # 16 points of 2 seeds each: the replicates took no point of the sampler
    assert len(groups) == 16
    assert all(sorted(t.user_attrs["seed"] for t in g) == [0, 1] for g in groups.values())
    assert all(len({repr(t.params) for t in g}) == 1 for g in groups.values())
    assert len({repr(g[0].params) for g in groups.values()}) == 16
    assert {t.params["batch_size"] for t in trials} <= {4, 8, 16}
    assert len({t.params["batch_size"] for t in trials}) > 1
    # the replicates inform the noise: the fitted noise is the true 0.1 to within a factor 2
    found = boundary.estimate(study)
    assert 0.05 < found.model.noise_sd < 0.2, found.model.noise_sd


def test_space_options_are_checked():
    with pytest.raises(UserError, match=r"sampler\.acquisition: expected one of straddle, timse"):
        SearchSpace.from_dict({"dimensions": DIMS_2D, "sampler": {"name": "boundary",
                                                                  "acquisition": "ei"}}, source="s")
    with pytest.raises(UserError, match="stop_when: expected boundary_settled"):
        SearchSpace.from_dict({"dimensions": DIMS_2D, "stop_when": "converged"}, source="s")
    with pytest.raises(UserError, match=r"stop_when\.boundary_settled: expected a share"):
        SearchSpace.from_dict({"dimensions": DIMS_2D, "stop_when": {"boundary_settled": 2}},
                              source="s")
    plain = SearchSpace.from_dict({"dimensions": DIMS_2D, "stop_when": "boundary_settled"},
                                  source="s")
    assert plain.stop_when == {"boundary_settled": boundary.DEFAULT_SETTLED}
    bare = SearchSpace.from_dict({"dimensions": DIMS_2D}, source="s")
    assert plain.fingerprint() == bare.fingerprint()  # when to stop is not a different design


# ---------------------------------------------------------------------------------------------
# the model and the estimate


def test_a_lattice_design_does_not_collapse_to_one_class():
    """A 5 x 5 lattice over a sharp step: length scales stay at or above the lattice spacing,
    so the model still separates the two sides (a collapsed GP predicts its mean everywhere)."""
    space = make_space(DIMS_2D)
    enc = boundary.Encoder(space.distributions())
    params = [{"n_real": n, "dream_multiplier": m} for n in (1, 3, 6, 16, 40) for m in (1, 2, 3, 6, 10)]
    model = boundary.fit_model(enc, params, [shift_of(SHARP, p) for p in params])
    spacing = np.array([np.median(np.diff(np.unique(enc.encode(params)[:, j]))) for j in (0, 1)])
    assert (model.length_scales >= spacing - 1e-9).all()
    grid = {"n_real": np.geomspace(1, 40, 60).repeat(60),
            "dream_multiplier": np.tile(np.geomspace(1, 10, 60), 60)}
    above = model.predict(enc.encode_columns(grid))[0] > 0.5
    truth = SHARP.truth(grid) > 0.5
    assert 0.2 < above.mean() < 0.8
    assert (above == truth).mean() > 0.9


@pytest.mark.parametrize("sampler", ["qmc", "random", "tpe", "grid", "boundary"])
def test_the_boundary_and_its_band_are_drawn_for_any_sampler(sampler):
    study = run(SHARP, make_space(DIMS_2D, sampler), 20, noise=0.02)
    found = boundary.estimate(study)
    fig = plots.surface_figure(study)
    line = [t for t in fig.data if (t.name or "").startswith("boundary:")]
    band = [t for t in fig.data if (t.name or "").startswith("95% band")]
    assert len(line) == 1 and len(band) == 2
    assert all(isinstance(t, go.Contour) and t.contours.start == pytest.approx(0.5) for t in line + band)
    assert f"{found.undecided:.0%} of the space undecided" in band[0].name
    # the line is the model's mean: above the level well past n_eff 40, below well before it
    x, y, z = np.array(line[0].x), np.array(line[0].y), np.array(line[0].z)
    n_eff = y[:, None] * x[None, :]
    assert (z[n_eff >= 160] > 0.5).mean() > 0.9 and (z[n_eff <= 10] < 0.5).mean() > 0.9
    # the band's edges: mean - 1.96 sd below the mean, mean + 1.96 sd above it
    assert (np.array(band[0].z) <= z + 1e-12).all() and (np.array(band[1].z) >= z - 1e-12).all()
    assert 0.0 <= found.undecided < 1.0


def test_the_lr_plane_boundary_follows_n_eff_times_lr():
    """lr-4d's truth: the boundary is n_eff x lr = 40 x 1e-3, whatever the batch size."""
    study = run(LR_4D, make_space(DIMS_4D, "qmc", n_trials=32), 32, noise=0.02)
    fig = plots.lr_figure(study)
    line = next(t for t in fig.data if (t.name or "").startswith("boundary:"))
    assert len([t for t in fig.data if (t.name or "").startswith("95% band")]) == 2
    x, y, z = np.array(line.x), np.array(line.y), np.array(line.z)
    dose = y[:, None] * x[None, :] / 1e-3  # n_eff x lr / 1e-3
    assert (z[dose >= 4 * 40] > 0.5).mean() > 0.9 and (z[dose <= 40 / 4] < 0.5).mean() > 0.9


def test_boundary_settled_stops_once_little_is_undecided():
    from study.sweep import Progress

    loose = make_space(DIMS_2D, stop_when={"boundary_settled": 0.9})
    study = run(SHARP, loose, 12, noise=0.02)
    share = boundary.undecided_now(study, loose)
    assert share is not None and share == pytest.approx(boundary.estimate(study).undecided)
    assert boundary.boundary_settled(study, loose) is (share < 0.9)
    strict = make_space(DIMS_2D, stop_when={"boundary_settled": 1e-6})
    assert not boundary.boundary_settled(study, strict)
    assert not boundary.boundary_settled(study, make_space(DIMS_2D))  # no stop_when: never
    assert f"boundary undecided {share:.0%}" in Progress(study, 1).line()
    # too few trials for the model: not settled, whatever the share
    early = run(SHARP, loose, 4, noise=0.02)
    assert not boundary.boundary_settled(early, loose)
