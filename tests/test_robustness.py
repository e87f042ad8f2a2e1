"""Sweeps that survive faults: rank agreement, distinct points per worker, journal heartbeats,
trial folders that are never overwritten, artifacts after measures, retries queued twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import storage
from search_spaces import HERE as SPACES
from search_spaces import load_space
from study import sweep, sweep_worker

SMOKE = SPACES / "smoke.yaml"


def space_file(tmp_path: Path, sampler: str, name: str = "space", **top) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["sampler"] = {"name": sampler, "seed": 3}
    data.update(top)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def handles(space, url: str, name: str, n: int = 2) -> list[optuna.Study]:
    """``n`` workers' views of one study: each with its own storage connection and sampler."""
    sweep.open_sweep(storage.open_storage(url), name, space, 8)
    return [sweep.load_sweep(storage.open_storage(url), name)[0] for _ in range(n)]


def interleaved_points(studies: list[optuna.Study], space, rounds: int) -> list[tuple]:
    """Every worker asks before any tells: the order that made shared-seed samplers collide."""
    points = []
    for _ in range(rounds):
        asked = [(s, s.ask()) for s in studies]
        for s, trial in asked:
            params = space.suggest(trial)
            points.append(tuple(sorted(params.items())))
            s.tell(trial, 0.0)
    return points


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc"])
def test_workers_sampling_at_once_get_distinct_points(tmp_path, sampler):
    # Before: tpe and random built every worker's sampler with the same seed, so two workers
    # asking in turn proposed identical points (all 8 here came in equal pairs).
    space = load_space(space_file(tmp_path, sampler))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    points = interleaved_points(handles(space, url, "s"), space, rounds=4)
    assert len(set(points)) == len(points) == 8


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_one_worker_sweep_is_reproducible(tmp_path, sampler):
    space = load_space(space_file(tmp_path, sampler))
    runs = []
    for k in range(2):
        (study,) = handles(space, f"sqlite:///{tmp_path / f'db{k}.sqlite'}", "s", n=1)
        runs.append(interleaved_points([study], space, rounds=5))
        seeds = [space.sampler_seed(t.number) for t in study.get_trials()]
        assert len(set(seeds)) == 5  # one recorded seed per trial, none shared
    assert runs[0] == runs[1]


def test_a_killed_trial_on_journal_storage_goes_stale_and_is_retried(tmp_path):
    # Before: a journal had no heartbeat, so a killed worker's trial stayed RUNNING for ever
    # and, counting toward the target, kept the study from finishing.
    url = f"journal:{tmp_path / 'study.log'}"
    space = load_space(space_file(tmp_path, "qmc", n_trials=2))
    store = storage.open_storage(url, heartbeat_s=1)
    study = sweep.open_sweep(store, "j", space, 2)
    done = study.ask()
    space.suggest(done)
    study.tell(done, 0.5)
    killed = study.ask()
    space.suggest(killed)
    store.record_heartbeat(killed._trial_id)  # as the worker's heartbeat thread does
    assert sweep.counts(study).finished  # 1 complete + 1 running: looks finished
    time.sleep(1.5)
    sweep._fail_stale(study)
    assert study.get_trials()[killed.number].state == TrialState.RUNNING  # beat 1.5 s ago < 3 s
    time.sleep(2.5)
    assert not sweep.sweep_finished(study)  # stale now: failed and queued again
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.WAITING and retry.params == trials[killed.number].params
    c = sweep.counts(study)
    assert (c.complete, c.failed, c.waiting) == (1, 0, 1)


def fake_objective(tmp_path, study, space, record, store=None):
    """The worker's objective with ``run_job`` replaced by a recorded result."""
    from optuna.artifacts import FileSystemArtifactStore

    def fake_run_job(session, job, index, label, startup_s=0.0):
        out = Path(job["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(record))
        return record

    sweep_worker.run_job = fake_run_job
    session = SimpleNamespace(accelerator=SimpleNamespace(num_processes=1))
    if store is None:
        (tmp_path / "artifacts").mkdir(exist_ok=True)
        store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    return sweep_worker.objective_factory(session, study, space, sweep.trials_root(study), store,
                                          0.0)


COMPLETE = {"status": "complete", "measures": {"shift": 0.25, "n_eff": 4},
            "probes": [{"id": "p0", "margin": 0.5, "base_margin": 0.25}], "timings": {}}


def test_two_storages_with_one_study_name_never_share_trial_folders(tmp_path, monkeypatch):
    # Before: both wrote storage/trials/<study>/trial-0000 and the second overwrote the first.
    monkeypatch.setattr(sweep_worker, "run_job", None)
    space = load_space(space_file(tmp_path, "qmc", n_trials=1))
    roots = []
    for k in range(2):
        study = sweep.open_sweep(storage.open_storage(f"sqlite:///{tmp_path / f'{k}.db'}"),
                                 "same", space, 1)
        sweep_worker.optimize(study, fake_objective(tmp_path, study, space, COMPLETE))
        (t,) = study.get_trials()
        assert t.state == TrialState.COMPLETE
        roots.append(Path(t.user_attrs["trial_dir"]))
    assert roots[0] != roots[1] and all((r / "result.json").exists() for r in roots)


def test_a_folder_holding_another_trials_record_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_worker, "run_job", None)
    space = load_space(space_file(tmp_path, "qmc", n_trials=1))
    study = sweep.open_sweep(storage.open_storage(), "s", space, 1)
    folder = sweep.trials_root(study) / "trial-0000"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text('{"status": "complete", "mine": true}')
    sweep_worker.optimize(study, fake_objective(tmp_path, study, space, COMPLETE))
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL and "already holds another trial" in t.user_attrs["fail_reason"]
    assert json.loads((folder / "result.json").read_text()) == {"status": "complete", "mine": True}


def test_an_artifact_that_cannot_be_stored_leaves_a_complete_trial(tmp_path, monkeypatch):
    # Before: the upload ran before the measures were stored, outside the try: the trial was
    # marked FAIL and its measures lost.
    monkeypatch.setattr(sweep_worker, "run_job", None)

    class FullDisk:
        def write(self, artifact_id, content_body):
            raise OSError(28, "No space left on device")

        def remove(self, artifact_id):
            pass

    space = load_space(space_file(tmp_path, "qmc", n_trials=1))
    study = sweep.open_sweep(storage.open_storage(), "s", space, 1)
    sweep_worker.optimize(study, fake_objective(tmp_path, study, space, COMPLETE, FullDisk()))
    (t,) = study.get_trials()
    assert t.state == TrialState.COMPLETE and t.values == [0.25]
    assert t.user_attrs["shift"] == 0.25 and "No space left" in t.user_attrs["artifact_warning"]


def test_an_interrupted_trial_queued_twice_runs_once(tmp_path, monkeypatch):
    # Two sweeps starting at once each read the interrupted trial and queue it: before, both
    # retries ran and the study had one trial too many.
    monkeypatch.setattr(sweep_worker, "run_job", None)
    space = load_space(space_file(tmp_path, "qmc", n_trials=2))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = sweep.open_sweep(storage.open_storage(url), "s", space, 2)
    trial = study.ask()
    space.suggest(trial)
    trial.set_user_attr("fail_reason", "interrupted")
    study.tell(trial, state=TrialState.FAIL)
    a, b = (sweep.load_sweep(storage.open_storage(url), "s")[0] for _ in range(2))
    snapshot = a.get_trials()  # both read the trials before either queues
    monkeypatch.setattr(type(b), "get_trials", lambda self, deepcopy=True, states=None: snapshot)
    assert sweep.requeue_interrupted(b) == 1
    monkeypatch.undo()
    monkeypatch.setattr(sweep_worker, "run_job", None)
    assert sweep.requeue_interrupted(a) == 0  # a reads after b queued: nothing to do
    second = [t for t in a.get_trials() if t.state == TrialState.WAITING]
    # The race itself: a had read before b wrote, so it queued one as well.
    a.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=second[0].params, distributions=second[0].distributions,
        system_attrs=dict(second[0].system_attrs)))
    sweep_worker.optimize(a, fake_objective(tmp_path, a, space, COMPLETE))
    trials = a.get_trials()
    runs = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert [t.state for t in runs] == [TrialState.COMPLETE, TrialState.FAIL]
    assert runs[1].user_attrs["duplicate_of"] == runs[0].number
    c = sweep.counts(a)
    assert (c.complete, c.failed, c.running, c.waiting) == (2, 0, 0, 0) and c.finished


def test_a_bare_sweep_keeps_a_target_raised_with_trials(tmp_path):
    space = load_space(space_file(tmp_path, "qmc", n_trials=4))
    store = storage.open_storage()
    assert sweep.open_sweep(store, "s", space, 12).user_attrs["n_trials"] == 12
    assert sweep.open_sweep(store, "s", space, None).user_attrs["n_trials"] == 12
    assert sweep.open_sweep(store, "t", space, None).user_attrs["n_trials"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("point", ["train_step", "score"])
def test_one_rank_failing_fails_its_trial_on_every_rank_and_the_group_goes_on(tmp_path, point):
    """Process 1 of a 2-process trial fails (in a training step, or before a gather while
    scoring). Before, process 0 waited in the collective for the backend's timeout (the
    sweep hung); now the group records the trial failed with process 1's reason and runs the
    next trial."""
    once = tmp_path / "fired"
    env = {**os.environ, "SHIFTSWEEP_INJECT_FAULT": f"{point}@1,{once}"}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "study.cli", "sweep", "--space", "smoke",
                           "--trials", "2", "--processes", "2"], capture_output=True, text=True,
                          timeout=400, env=env)
    assert once.exists(), done.stderr[-3000:]
    trials = optuna.load_study(study_name="smoke", storage=storage.open_storage()).get_trials()
    states = [t.state for t in trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE], done.stderr[-3000:]
    reason = trials[0].user_attrs["fail_reason"]
    assert f"fault injected at {point} on process 1" in reason
    assert "process 1 of the trial failed" in reason or point == "train_step"
    assert time.time() - started < 400
    result = json.loads((Path(trials[1].user_attrs["trial_dir"]) / "result.json").read_text())
    assert result["status"] == "complete" and result["processes"] == 2


def test_a_trial_killed_before_its_first_heartbeat_goes_stale_too(tmp_path):
    """A worker killed between taking a trial and its first heartbeat: Optuna's RDB storage
    skips RUNNING trials without a heartbeat, so before, the trial stayed RUNNING for good and
    counted toward the target (seen in CI: the killed-worker sweep ended with 2 of 3 trials)."""
    space = load_space(space_file(tmp_path, "qmc", n_trials=2))
    store = storage.open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat_s=1)
    study = sweep.open_sweep(store, "s", space, 2)
    killed = study.ask()  # RUNNING, and no heartbeat ever written
    space.suggest(killed)
    sweep._fail_stale(study)
    assert study.get_trials()[killed.number].state == TrialState.RUNNING  # not 3 s old yet
    time.sleep(3.5)
    assert not sweep.sweep_finished(study)
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    assert [t.state for t in trials if t.system_attrs.get("failed_trial") == killed.number] == [
        TrialState.WAITING]
