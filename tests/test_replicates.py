"""Replicates (``seeds_per_point: K``): every sampled point runs as K trials, seeds s..s+K-1.

The in-process tests drive a real SQLite study through the sweep worker's own objective
(``study.sweep_worker.objective_factory`` and ``optimize``) with only the training stubbed
(``run_job``), so they cover what a worker does without launching ``accelerate``. One slow
test runs ``shiftsweep sweep`` end to end on the tiny model.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import storage
from objectives.errors import UserError
from search_spaces import HERE as SPACES
from search_spaces import DeclaredSpaceQMC, load_space
from study import sweep, sweep_worker

SMOKE = SPACES / "smoke.yaml"


def space_file(tmp_path: Path, name: str = "reps", **top) -> Path:
    """The shipped smoke space with some top-level keys changed (seeds_per_point, n_trials...)."""
    data = yaml.safe_load(SMOKE.read_text())
    data.update(top)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class FakeTraining:
    """Stands in for ``study.worker.run_job``: records each job, returns a complete record."""

    def __init__(self, interrupt_at: int | None = None, sleep_s: float = 0.0) -> None:
        self.jobs: list[dict] = []
        self.interrupt_at = interrupt_at  # the call (1-based) that gets a Ctrl-C
        self.sleep_s = sleep_s
        self.lock = threading.Lock()

    def __call__(self, session, job, number, label, startup_s=0.0) -> dict:
        with self.lock:
            self.jobs.append(job)
            calls = len(self.jobs)
        if calls == self.interrupt_at:
            raise KeyboardInterrupt
        time.sleep(self.sleep_s)
        config = job["config"]
        shift = config["lr"] * 10 + config["seed"] * 1e-3  # depends on the seed: noise
        probes = [{"id": f"p{i}", "margin": shift + i, "base_margin": float(i)} for i in range(3)]
        return {"status": "complete", "measures": {"shift": shift, "adoption": 0.5},
                "probes": probes, "timings": {"train_s": 0.1}}


def worker_objective(study, space, tmp_path, monkeypatch, fake: FakeTraining):
    """The sweep worker's objective, on one process, with the training replaced by ``fake``."""
    from optuna.artifacts import FileSystemArtifactStore

    monkeypatch.setattr(sweep_worker, "run_job", fake)
    session = SimpleNamespace(accelerator=SimpleNamespace(num_processes=1))
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    return sweep_worker.objective_factory(session, study, space, tmp_path / "trials", store, 0.0)


def new_sweep(tmp_path, name: str = "reps", n_trials: int | None = None, **top):
    """A study created as ``shiftsweep sweep`` creates it, then joined as a worker joins it."""
    if n_trials is not None:
        top["n_trials"] = n_trials
    space = load_space(space_file(tmp_path, name, **top))
    store = storage.open_storage()
    sweep.open_sweep(store, name, space, space.n_trials)
    return sweep.load_sweep(store, name)


def groups_of(trials) -> dict[int, list]:
    groups: dict[int, list] = defaultdict(list)
    for t in trials:
        groups[t.user_attrs["replicate_of"]].append(t)
    return dict(groups)


def point(t) -> tuple:
    return tuple(sorted(t.params.items()))


def assert_complete_groups(trials, k: int, points: int, base_seed: int = 0) -> dict[int, list]:
    """``points`` groups of ``k`` complete trials: same params within, seeds s..s+k-1, distinct
    params across groups; a group is named by its first trial, which ran the base seed."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    groups = groups_of(complete)
    assert len(groups) == points and len(complete) == points * k
    for first, members in groups.items():
        assert len({point(t) for t in members}) == 1, "one point per group"
        seeds = sorted(t.user_attrs["seed"] for t in members)
        assert seeds == list(range(base_seed, base_seed + k))
        assert sorted(t.user_attrs["replicate_seed"] for t in members) == seeds
        head = trials[first]
        assert head.number == first and head.user_attrs["replicate_seed"] == base_seed
    assert len({point(ms[0]) for ms in groups.values()}) == points, "distinct points"
    return groups


def first_sobol_points(space, n: int) -> list[tuple]:
    """The first ``n`` points of the space's Sobol sequence, one trial after another, with
    Optuna's own sample counter (a study attribute) choosing each trial's point."""
    sampler = space.make_sampler()
    assert isinstance(sampler, DeclaredSpaceQMC)
    sampler._find_sample_id = functools.partial(optuna.samplers.QMCSampler._find_sample_id,
                                                sampler)
    study = optuna.create_study(directions=space.directions, sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(tuple(sorted(space.suggest(trial).items())))
        study.tell(trial, 0.0)
    return out


def test_every_point_runs_k_seeds_through_the_worker_objective(tmp_path, monkeypatch):
    study, space = new_sweep(tmp_path, seeds_per_point=3, n_trials=12)
    fake = FakeTraining()
    sweep_worker.optimize(study, worker_objective(study, space, tmp_path, monkeypatch, fake))
    trials = study.get_trials()
    assert len(trials) == 12
    groups = assert_complete_groups(trials, k=3, points=4)
    # Each replicate is a real trial: its own folder, its own record, its own value.
    assert len({t.user_attrs["trial_dir"] for t in trials}) == 12
    assert [j["config"]["seed"] for j in fake.jobs] == [t.user_attrs["seed"] for t in trials]
    for t in trials:
        assert t.value == pytest.approx(t.params["lr"] * 10 + t.user_attrs["seed"] * 1e-3)
        assert len(t.user_attrs["probe_margins"]) == 3
    # The sampler's state is not disturbed: the points are the first four Sobol points, as
    # without replicates (queued trials fix every parameter, so they take no QMC sample id).
    heads = [groups[first][0] for first in sorted(groups)]
    assert [point(t) for t in heads] == first_sobol_points(space, 4)
    assert sweep.counts(study).finished


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_replicates_with_other_samplers(tmp_path, monkeypatch, sampler):
    study, space = new_sweep(tmp_path, seeds_per_point=2, n_trials=6,
                             sampler={"name": sampler, "seed": 1})
    sweep_worker.optimize(study, worker_objective(study, space, tmp_path, monkeypatch,
                                                  FakeTraining()))
    assert_complete_groups(study.get_trials(), k=2, points=3)


def test_a_grid_runs_each_point_k_times_and_stops_when_it_is_done(tmp_path, monkeypatch):
    dims = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": {"type": "categorical", "values": [2, 4]}}
    fixed = {**yaml.safe_load(SMOKE.read_text())["fixed"], "n_real": 2, "dream_multiplier": 1}
    # 4 grid points x 2 seeds; the target asks for more, the grid ends the sweep at 8.
    study, space = new_sweep(tmp_path, dimensions=dims, fixed=fixed, seeds_per_point=2,
                             n_trials=12, sampler={"name": "grid", "points": 2})
    sweep_worker.optimize(study, worker_objective(study, space, tmp_path, monkeypatch,
                                                  FakeTraining()))
    trials = study.get_trials()
    assert len(trials) == 8  # Optuna's grid would stop before the last point's replicate
    groups = assert_complete_groups(trials, k=2, points=4)
    grid = {(("batch_size", b), ("lr", lr)) for b in (2, 4) for lr in (1e-4, 1e-2)}
    assert {point(ms[0]) for ms in groups.values()} == grid


def test_a_stopped_sweep_runs_its_queued_replicates_when_resumed(tmp_path, monkeypatch):
    study, space = new_sweep(tmp_path, seeds_per_point=3, n_trials=6)
    objective = worker_objective(study, space, tmp_path, monkeypatch, FakeTraining())
    study.optimize(objective, n_trials=1)  # a worker that stops after one trial
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [(t.user_attrs["replicate_of"], t.user_attrs["replicate_seed"]) for t in waiting] \
        == [(0, 1), (0, 2)]
    assert waiting[0].system_attrs["fixed_params"] == study.trials[0].params
    assert not sweep.sweep_finished(study)  # queued replicates are work still to do

    again, space = sweep.load_sweep(storage.open_storage(), "reps")  # a new worker joins
    sweep_worker.optimize(again, worker_objective(again, space, tmp_path, monkeypatch,
                                                  FakeTraining()))
    trials = again.get_trials()
    assert len(trials) == 6
    assert_complete_groups(trials, k=3, points=2)


@pytest.mark.parametrize("retry", ["interrupted", "heartbeat"])
@pytest.mark.parametrize("victim", [1, 2], ids=["first-of-point", "replicate"])
def test_a_retried_trial_keeps_its_group_and_seed(tmp_path, monkeypatch, retry, victim):
    study, space = new_sweep(tmp_path, seeds_per_point=3, n_trials=6)
    objective = worker_objective(study, space, tmp_path, monkeypatch,
                                 FakeTraining(interrupt_at=victim))
    with pytest.raises(KeyboardInterrupt):
        sweep_worker.optimize(study, objective)
    failed = study.trials[victim - 1]
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted"
    if retry == "interrupted":  # what the next `shiftsweep sweep` does
        assert sweep.requeue_interrupted(study) == 1
    else:  # what the heartbeat does with a killed worker's trial
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        RetryHeartbeatStaleTrialCallback()(study, failed)
    sweep_worker.optimize(study, worker_objective(study, space, tmp_path, monkeypatch,
                                                  FakeTraining()))
    trials = study.get_trials()
    assert len(trials) == 7  # the failed one, and no point queued twice
    assert_complete_groups(trials, k=3, points=2)
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].user_attrs["seed"] == failed.user_attrs["replicate_seed"]
    assert retried[0].user_attrs["replicate_of"] == 0


def test_two_workers_keep_groups_whole(tmp_path, monkeypatch):
    study, space = new_sweep(tmp_path, seeds_per_point=2, n_trials=8)
    fake = FakeTraining(sleep_s=0.05)  # both workers finish at once: they race for the queue
    joined = []
    for _ in range(2):  # as two worker processes do: their own storage, SQLite pops serialized
        store = storage.open_storage()
        sweep_worker.serialize_sqlite_pops(store)
        joined.append(sweep.load_sweep(store, "reps")[0])
    errors: list[BaseException] = []

    def work(study, objective):
        try:
            sweep_worker.optimize(study, objective)
        except BaseException as err:  # e.g. "Cannot tell a COMPLETE trial": a trial run twice
            errors.append(err)

    workers = [threading.Thread(target=work,
                                args=(s, worker_objective(s, space, tmp_path, monkeypatch, fake)))
               for s in joined]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    trials = study.get_trials()
    assert not [t for t in trials if t.state != TrialState.COMPLETE], "nothing left queued"
    assert len(fake.jobs) == len(trials), "no queued trial popped and run by both workers"
    # Two workers may each start a point at once: at most one extra group, never half a one.
    assert len(trials) in (8, 10)
    assert_complete_groups(trials, k=2, points=len(trials) // 2)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_sobol_point_follows_the_trial_number_not_the_order_of_sampling(tmp_path):
    # Two workers that ask at once and sample in the other order still get distinct points,
    # the ones a single worker gets; a queued trial in between takes none.
    study, space = new_sweep(tmp_path, seeds_per_point=2, n_trials=4)
    first = study.ask()
    study.enqueue_trial({"n_real": 1, "dream_multiplier": 1, "lr": 1e-3, "batch_size": 2})
    queued = study.ask()
    second = study.ask()
    points = {n: tuple(sorted(space.suggest(t).items())) for n, t in
              [(2, second), (0, first), (1, queued)]}
    assert [points[0], points[2]] == first_sobol_points(space, 2)


def test_the_trial_count_must_be_a_multiple_of_the_seeds(tmp_path):
    space = load_space(space_file(tmp_path, seeds_per_point=2))
    with pytest.raises(UserError) as err:
        sweep.open_sweep(storage.open_storage(), "reps", space, 5)
    message = str(err.value)
    assert "--trials 5" in message and "seeds_per_point 2" in message and "4 or 6" in message
    assert "\n" not in message


def test_a_study_refuses_a_space_with_other_seeds_per_point(tmp_path):
    store = storage.open_storage()
    sweep.open_sweep(store, "reps", load_space(space_file(tmp_path, seeds_per_point=2)), 4)
    other = load_space(space_file(tmp_path, "reps3", seeds_per_point=3, n_trials=6))
    with pytest.raises(UserError, match="different search space"):
        sweep.open_sweep(store, "reps", other, 6)
    study, stored = sweep.load_sweep(store, "reps")
    assert stored.seeds_per_point == 2 and study.user_attrs["search_space"]["seeds_per_point"] == 2
    assert "2 points × 2 seeds" in stored.describe()


def test_without_replicates_trials_are_as_before(tmp_path, monkeypatch):
    study, space = new_sweep(tmp_path, n_trials=3)
    sweep_worker.optimize(study, worker_objective(study, space, tmp_path, monkeypatch,
                                                  FakeTraining()))
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all("replicate_of" not in t.user_attrs and t.user_attrs["seed"] == 0 for t in trials)
    assert [point(t) for t in trials] == first_sobol_points(space, 3)


@pytest.mark.slow
def test_sweep_runs_two_points_with_two_seeds_each(tmp_path):
    space = space_file(tmp_path, "smoke-reps", seeds_per_point=2, n_trials=4)
    done = subprocess.run([sys.executable, "-m", "study.cli", "sweep", "--space", str(space),
                           "--trials", "4"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trials 4/4 done (4 complete, 0 failed)" in done.stderr
    study = optuna.load_study(study_name="smoke-reps", storage=storage.open_storage())
    trials = study.get_trials()
    assert len(trials) == 4
    groups = assert_complete_groups(trials, k=2, points=2)
    for members in groups.values():
        for t in members:
            result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
            assert result["config"]["seed"] == t.user_attrs["seed"]
            assert result["config"]["lr"] == t.params["lr"]
    assert len({t.user_attrs["trial_dir"] for t in trials}) == 4
