"""A sweep worker: one ``accelerate launch`` that runs trial after trial of one Optuna study.

    python -m study.sweep_worker --study NAME --storage URL [--heartbeat S]

The search space, objective and trial count come from the study itself (``shiftsweep sweep``
stored them), so a worker on another machine needs only the study's name and storage. The
main process runs ``study.optimize`` (the heartbeat runs only there, Optuna's rule) and
sends each trial's config to the other processes, which train and score it with it
(data-parallel). A trial that fails is recorded as failed with its reason and the worker
goes on; it stops when the study has its trials.

Replicates (``seeds_per_point: K`` in the space): :func:`trial_config` turns each Optuna
trial into its config. A trial the sampler proposed is the first of its point's group: it runs
the base seed s and queues the point's K - 1 other seeds as trials with the same parameters.
Every trial of a group records ``replicate_of`` (the group's first trial number) and
``replicate_seed``; a queued replicate runs with its ``replicate_seed``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from objectives.measures import NAMES as MEASURE_NAMES
from objectives.ranks import broadcast
from objectives.records import plain
from study.sweep import REPLICATE_ATTRS, STORAGE_ENV, duplicate_retry
from study.worker import run_job, say, start_session

STOP = None  # what the main process broadcasts when the sweep is over
COORDINATOR_ENV = "SHIFTSWEEP_COORDINATOR_PID"  # set by study.sweep.launch_worker
OUTAGE_S = 600.0  # how long a worker waits for an unreachable storage before it gives up
NO_SPACE_EXIT = 75  # a worker that stopped because the trial folders' disk is full (EX_TEMPFAIL)
NO_SPACE_LINE = "no space left on the disk of"  # how the coordinator recognises that stop
NO_SPACE_MARKS = ("[Errno 28]", "[Errno 122]")  # ENOSPC, EDQUOT in an OSError's message


class NoSpaceLeft(KeyboardInterrupt):
    """The trial folders' file system is full: stop this worker (a KeyboardInterrupt, so that
    Optuna records the trial failed and lets it through), and queue the trial again."""

# Measures and settings stored as user attributes of every trial (the dashboard shows them).
# Every measure of the registry, and the settings that analysis groups trials by.
MEASURE_ATTRS = MEASURE_NAMES
CONFIG_ATTRS = ("n_real", "dream_multiplier", "lr", "batch_size", "epochs", "seed",
                "dream_strategy", "train_on", "finetune", "optimizer")


class TrialFailed(Exception):
    """A trial that ran and failed; its reason is recorded on the Optuna trial."""


def trial_config(trial: Any, study: Any, space: Any) -> Any:
    """The :class:`TrialConfig` of ``trial``: its sampled (or queued) point and its seed.

    With ``space.seeds_per_point`` K = 1 this is ``space.config(space.suggest(trial))``. With
    K > 1, a trial carries ``replicate_of``/``replicate_seed`` (a queued replicate, or a retry
    that inherited them), or it is a retry of a trial that had them (read from the failed
    trial), or it is a new point: then it is its own group's first trial, runs the base seed and
    queues the missing seeds of its group. Queueing is idempotent (it looks at the group's
    trials in storage), so a retried first trial completes its group instead of doubling it.
    Queued trials fix every parameter, so they take no QMC sample id and no grid point.
    """
    params = space.suggest(trial)
    k = space.seeds_per_point
    if k == 1:
        return space.config(params)
    attrs = {key: trial.user_attrs[key] for key in REPLICATE_ATTRS if key in trial.user_attrs}
    failed = study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
    if len(attrs) < len(REPLICATE_ATTRS) and failed is not None:
        # Queued again by shiftsweep sweep (interrupted) or the heartbeat: same group, same seed.
        original = study.get_trials(deepcopy=False)[failed].user_attrs
        attrs = {key: original[key] for key in REPLICATE_ATTRS if key in original}
    if len(attrs) < len(REPLICATE_ATTRS):
        attrs = {"replicate_of": trial.number, "replicate_seed": space.base_seed}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if attrs["replicate_seed"] == space.base_seed:
        queue_replicates(study, space, attrs["replicate_of"], params)
    return space.config({**params, "seed": attrs["replicate_seed"]})


def queue_replicates(study: Any, space: Any, group: int, params: dict[str, Any]) -> int:
    """Queue the seeds of point ``group`` that no trial of it has yet; returns how many."""
    have = {t.user_attrs.get("replicate_seed") for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("replicate_of") == group}
    queued = 0
    for seed in range(space.base_seed + 1, space.base_seed + space.seeds_per_point):
        if seed not in have:
            study.enqueue_trial(dict(params),
                                user_attrs={"replicate_of": group, "replicate_seed": seed})
            queued += 1
    return queued


def objective_factory(session: Any, study: Any, space: Any, trials_root: Path,
                      artifact_store: Any, startup_s: float, worker_index: int = 0):
    """The Optuna objective: sample a point, run it on every process, record it."""
    import optuna
    from optuna.artifacts import upload_artifact

    first = [True]

    def objective(trial: optuna.Trial) -> float | list[float]:
        started = time.time()
        out = trials_root / f"trial-{trial.number:04d}"
        trial.set_user_attr("trial_dir", str(out))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}/{worker_index}")
        trial.set_user_attr("sampler_seed", space.sampler_seed(trial.number))
        frozen = study._storage.get_trial(trial._trial_id)
        earlier = duplicate_retry(study, frozen)
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier)
            reason = (f"a second retry of what trial {earlier} retries (queued twice by two "
                      f"sweeps starting at once); not run")
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason)
        try:
            if out.exists() and any(out.iterdir()):
                raise UserError(f"{out}: this trial folder already holds another trial's record; "
                                f"nothing was written into it")
            config = trial_config(trial, study, space)
            for key in CONFIG_ATTRS:
                trial.set_user_attr(key, getattr(config, key))
            job = {"config": config.to_dict(), "out": str(out)}
            broadcast(session.accelerator, job)
            record = run_job(session, job, trial.number, f"#{trial.number}",
                             startup_s if first[0] else 0.0)
            first[0] = False
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except Exception as err:  # e.g. a bad fixed setting: the same on every rank
            _stop_if_no_space(trial, str(err), out)
            trial.set_user_attr("fail_reason", str(err))
            raise TrialFailed(str(err)) from err
        timings = record.get("timings", {})
        trial.set_user_attr("train_s", round(timings.get("train_s", 0.0), 3))
        trial.set_user_attr("score_s", round(timings.get("score_s", 0.0), 3))
        trial.set_user_attr("base_score_s", round(timings.get("base_score_s", 0.0), 3))
        trial.set_user_attr("objective_s", round(time.time() - started, 3))
        if record["status"] != "complete":
            _stop_if_no_space(trial, record["error"], out)
            trial.set_user_attr("fail_reason", record["error"])
            trial.set_user_attr("failure", record.get("failure", "error"))  # diverged, oom, ...
            raise TrialFailed(record["error"])
        measures = record["measures"]
        for key in MEASURE_ATTRS:
            trial.set_user_attr(key, plain(measures.get(key)))
        # per-probe margins in the study's probe order: analysis needs only the storage
        trial.set_user_attr("probe_margins", [plain(p["margin"]) for p in record["probes"]])
        if "probe_ids" not in study.user_attrs:
            study.set_user_attr("probe_ids", [p["id"] for p in record["probes"]])
            study.set_user_attr("base_probe_margins",
                                [plain(p["base_margin"]) for p in record["probes"]])
        values = [measures.get(name) for name in space.objective]
        undefined = [n for n, v in zip(space.objective, values, strict=True)
                     if v is None or not math.isfinite(v)]
        if undefined:
            from objectives.measures import get

            needs = get(undefined[0]).requires
            reason = (f"{undefined[0]} is undefined for this trial"
                      + (f" (it needs {needs})" if needs else ""))
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason)
        # The measures are stored: an artifact that cannot be uploaded (a full disk, a lost
        # mount) is a warning on a complete trial, never a lost one.
        for name in ("result.json", "train_log.jsonl"):
            path = out / name
            if not path.exists():
                continue
            try:
                upload_artifact(artifact_store=artifact_store, file_path=str(path),
                                study_or_trial=trial)
            except Exception as err:
                warning = (f"{name} was not uploaded to the artifact store "
                           f"({type(err).__name__}: {err})")
                trial.set_user_attr("artifact_warning", warning)
                say(f"trial {trial.number}: {warning}")
        return values[0] if len(values) == 1 else values

    return objective


def _stop_once(signum: int, frame: Any) -> None:
    """The first SIGINT or SIGTERM interrupts the trial; later ones are ignored, so that the
    trial's failure (``interrupted``) is recorded whole. The coordinator SIGKILLs a worker
    that has not stopped after its grace period."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _watch_coordinator(pid: int, period_s: float = 2.0) -> None:
    """Stop this worker as if interrupted when the coordinator that started it is gone
    (killed with SIGKILL, its terminal closed): its trial is queued again by the next run,
    and no worker is left running that nobody watches."""
    import _thread
    import threading

    def watch() -> None:
        while True:
            time.sleep(period_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                _thread.interrupt_main(signal.SIGINT)
                return
            except PermissionError:
                pass

    threading.Thread(target=watch, name="coordinator-watch", daemon=True).start()


def _stop_if_no_space(trial: Any, reason: str, out: Path) -> None:
    """A full disk is not this trial's fault and would fail every later one in seconds:
    record it as interrupted (queued again by the next run) and stop the worker."""
    if any(mark in reason for mark in NO_SPACE_MARKS):
        trial.set_user_attr("fail_reason", "interrupted")
        trial.set_user_attr("interrupted_by", reason)
        raise NoSpaceLeft(f"{NO_SPACE_LINE} {out.parent} ({reason}); free space "
                          f"there and rerun the same command")


def run(study_name: str, storage_url: str, heartbeat_s: int, artifacts: Path,
        trials_root: Path | None, worker_index: int = 0) -> int:
    signal.signal(signal.SIGINT, _stop_once)
    signal.signal(signal.SIGTERM, _stop_once)  # a scheduler's stop: as Ctrl-C
    if os.environ.get(COORDINATOR_ENV, "").isdigit():
        _watch_coordinator(int(os.environ[COORDINATOR_ENV]))
    session, startup_s = start_session()
    main = session.accelerator.is_main_process
    if not main:  # follow the main process: one trial per message, until STOP
        while (job := broadcast(session.accelerator, STOP)) is not STOP:
            run_job(session, job, -1, "")
        return 0

    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from storage import open_storage
    from study.sweep import load_sweep, sweep_finished
    from study.sweep import trials_root as study_trials_root

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url, heartbeat_s=heartbeat_s)
    serialize_sqlite_pops(storage)
    study, space = load_sweep(storage, study_name)
    root = trials_root or study_trials_root(study)
    artifacts.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifacts))
    objective = objective_factory(session, study, space, root, store, startup_s, worker_index)
    interrupted = False
    try:
        if not sweep_finished(study):
            say(f"worker {socket.gethostname()}:{os.getpid()} joins study {study_name!r}")
            optimize(study, objective)
    except NoSpaceLeft as err:
        say(str(err))
        # The other processes wait for the next job: send them STOP (finally), then exit.
        return NO_SPACE_EXIT
    except KeyboardInterrupt:
        interrupted = True  # the other ranks got the same signal: no STOP to wait for
        say("interrupted: the running trial is recorded failed (interrupted) and queued again "
            "by the next `shiftsweep sweep`")
        return 130
    finally:
        if not interrupted:
            broadcast(session.accelerator, STOP)
    return 0


def serialize_sqlite_pops(storage: Any) -> None:
    """On SQLite, make every transaction of this worker take the write lock when it begins.

    Optuna pops a queued trial by reading it WAITING and then setting it RUNNING; PostgreSQL
    and MySQL lock the row between the two (SELECT ... FOR UPDATE), SQLite ignores that, so
    two local workers could both pop the same queued trial (a replicate, a retry): both run
    it into the same folder, and the second to finish dies on "Cannot tell a COMPLETE
    trial". ``BEGIN IMMEDIATE`` (SQLAlchemy's recipe for SQLite) serializes the pops;
    Optuna's transactions are short, and the busy timeout (``storage.open_storage``) waits.
    """
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # let BEGIN below start every transaction

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners: replaced by new ones


def optimize(study: Any, objective: Any, outage_s: float = OUTAGE_S) -> None:
    """Run trials until the study has its trials (queued replicates and retries included).

    If the storage becomes unreachable (a database server restarting), wait for it for up to
    ``outage_s`` and go on; a trial whose result could not be stored is failed by its stale
    heartbeat and run again.
    """
    from storage import is_storage_error
    from study.analysis.boundary import boundary_settled
    from study.sweep import sweep_finished

    def stop_when_done(study: Any, trial: Any) -> None:
        if sweep_finished(study) or boundary_settled(study):  # stop_when: boundary_settled
            study.stop()

    while True:
        try:
            study.optimize(objective, callbacks=[stop_when_done], catch=(Exception,),
                           gc_after_trial=False)
            return
        except Exception as err:
            if not is_storage_error(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            say(f"the storage is unreachable ({first[:160]}); waiting up to {outage_s:.0f} s")
            _wait_for_storage(study, outage_s)
            _requeue_own_running(study)
            if sweep_finished(study):
                return


def _requeue_own_running(study: Any) -> None:
    """The trial this worker was running when the storage went away cannot be told any more:
    fail it as interrupted and queue it again now, rather than leave it RUNNING (counted toward
    the target) until its heartbeat goes stale."""
    import optuna
    from optuna.trial import TrialState

    from study.sweep import requeue_interrupted

    me = f"{socket.gethostname()}:{os.getpid()}/"
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if str(t.user_attrs.get("worker", "")).startswith(me):
            try:
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted")
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another process failed it (stale heartbeat) meanwhile
    requeue_interrupted(study)


def _wait_for_storage(study: Any, outage_s: float) -> None:
    from storage import is_storage_error

    deadline = time.time() + outage_s
    while True:
        time.sleep(2.0)
        try:
            study.user_attrs  # noqa: B018 - a read that needs the server
            say("the storage is back: going on")
            return
        except Exception as err:
            if not is_storage_error(err) or time.time() > deadline:
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.sweep_worker")
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", default=None, help=f"default: ${STORAGE_ENV}")
    parser.add_argument("--heartbeat", type=int, default=10)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--trials-dir", type=Path, default=None)
    parser.add_argument("--worker-index", type=int, default=0,
                        help="this worker's slot in its coordinator (recorded on its trials)")
    args = parser.parse_args(argv)
    url = args.storage or os.environ.get(STORAGE_ENV)
    if not url:
        parser.error(f"--storage: expected a storage URL (or ${STORAGE_ENV})")
    return run(args.study, url, args.heartbeat, args.artifacts, args.trials_dir,
               args.worker_index)


if __name__ == "__main__":
    sys.exit(main())
