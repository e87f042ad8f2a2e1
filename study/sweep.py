"""Sweeps: create or resume an Optuna study from a search space, run its workers, show progress.

``shiftsweep sweep`` (``make sweep``) creates the study, or resumes it when it exists, and
launches ``--workers`` sweep workers (``study.sweep_worker``), each one ``accelerate launch``
pinned to its GPU group with its own port. ``shiftsweep worker`` (``make worker``) launches
workers for a study that already exists, from any machine that reaches its storage.

Trial counting: the study is finished when ``complete + failed + running >= n_trials``, where
a failed trial that was queued again (heartbeat gone stale, or interrupted) does not count:
its retry does. Two machines may queue the same failed trial at once; the retry with the
lowest number is the one that runs, a later one is failed unrun with ``duplicate_of`` (see
:func:`duplicate_retry`) and not counted. So rerunning the same command never repeats a
finished trial and ends with the right number of trials. A queued (WAITING) trial is
promised work: the study is not finished while one is left, so a point's replicates
(``seeds_per_point``) queued by a sweep that stopped are run by the next one, not dropped.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from objectives.records import say

# How the sweep hands its storage URL (it may hold a password) to its workers: by
# environment, never on a command line (visible in `ps`) or in a log.
from storage import STORAGE_ENV

POLL_S = 3.0
STOP_GRACE_S = 60.0  # how long interrupted workers get to record their trials
MAX_RESTARTS = 3  # a worker that dies is started again this many times
# User attributes of every trial of a replicate group (seeds_per_point > 1): the group's first
# trial number and this trial's seed.
REPLICATE_ATTRS = ("replicate_of", "replicate_seed")


@dataclass
class Counts:
    target: int
    complete: int
    failed: int
    running: int
    waiting: int

    @property
    def done(self) -> int:
        return self.complete + self.failed

    @property
    def finished(self) -> bool:
        return self.done + self.running >= self.target and not self.waiting


def counts(study: Any) -> Counts:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    by_state = {s: 0 for s in TrialState}
    for t in trials:
        if t.state == TrialState.FAIL and (t.number in retried or "duplicate_of" in t.user_attrs):
            continue  # counted through its retry, or a second retry that never ran
        by_state[t.state] += 1
    return Counts(target=int(study.user_attrs.get("n_trials", 0)),
                  complete=by_state[TrialState.COMPLETE], failed=by_state[TrialState.FAIL],
                  running=by_state[TrialState.RUNNING], waiting=by_state[TrialState.WAITING])


def sweep_finished(study: Any) -> bool:
    _fail_stale(study)
    return counts(study).finished


def _fail_stale(study: Any) -> None:
    import warnings

    from optuna.storages import fail_stale_trials
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if is_heartbeat_enabled(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fail_stale_trials(study)


def load_sweep(storage: Any, study_name: str) -> tuple[Any, Any]:
    """The study and its search space (stored in the study by :func:`open_sweep`)."""
    import optuna

    from search_spaces import SearchSpace

    if study_name not in optuna.study.get_all_study_names(storage):
        raise UserError(f"--study {study_name}: no such study in this storage "
                        f"(start it with `shiftsweep sweep --space ... --study {study_name}`)")
    probe = optuna.load_study(study_name=study_name, storage=storage)
    data = probe.user_attrs.get("search_space")
    if not isinstance(data, dict):
        raise UserError(f"--study {study_name}: was not created by shiftsweep sweep "
                        f"(it has no search_space attribute)")
    space = SearchSpace.from_dict(data, source=f"study {study_name}")
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=space.make_sampler())
    return study, space


def open_sweep(storage: Any, study_name: str, space: Any, n_trials: int | None) -> Any:
    """Create the study, or resume it if its search space is the same one.

    ``n_trials`` counts trials, replicates included: a multiple of ``space.seeds_per_point``.
    None (no ``--trials``) is the space's ``n_trials`` for a new study and, for a study that
    exists, the target it has (a bare ``make sweep`` never lowers a target raised with
    ``--trials``).
    """
    import optuna

    from study.provenance import provenance

    k = space.seeds_per_point
    exists = study_name in optuna.study.get_all_study_names(storage)
    if n_trials is None:
        stored = (optuna.load_study(study_name=study_name, storage=storage).user_attrs
                  .get("n_trials") if exists else None)
        n_trials = int(stored) if stored else space.n_trials
    if n_trials % k:
        raise UserError(f"--trials {n_trials}: expected a multiple of seeds_per_point {k} "
                        f"({space.source}: every point runs {k} seeds), e.g. "
                        f"{n_trials // k * k or k} or {(n_trials // k + 1) * k}")

    if exists:
        study, stored = load_sweep(storage, study_name)
        if stored.fingerprint() != space.fingerprint():
            raise UserError(
                f"--study {study_name}: this study was created from a different search space "
                f"({stored.source}); its trials cannot be mixed with {space.source}'s. "
                f"Use --study NEW_NAME, or --storage elsewhere")
    else:
        study = optuna.create_study(study_name=study_name, storage=storage,
                                    directions=space.directions, sampler=space.make_sampler(),
                                    load_if_exists=True)
        # Trial folders are keyed by this, not only the name: a second storage, or a study
        # deleted and created again under the same name, never writes into its folders.
        study.set_user_attr("study_uid", uuid.uuid4().hex[:8])
        study.set_user_attr("search_space", space.to_dict())
        study.set_user_attr("space_fingerprint", space.fingerprint())
        study.set_user_attr("objective", space.objective)
        study.set_metric_names(space.objective)  # the dashboard says "shift", not "Objective 0"
        study.set_user_attr("behavior", space.fixed.get("behavior", "listening"))
        study.set_user_attr("model", space.fixed.get("model", "default"))
        study.set_user_attr("created", provenance({}))
    study.set_user_attr("n_trials", n_trials)
    study.set_user_attr("boundary_level", space.boundary_level)
    _save_note(study, space)
    return study


def _save_note(study: Any, space: Any) -> None:
    try:
        from optuna_dashboard import save_note
    except ImportError:  # the dashboard is optional for sweeping
        return
    save_note(study, space.describe() + "\n\nThe boundary plot below is updated at the end of "
              "each `shiftsweep sweep`; `make plots STUDY=" + study.study_name + "` exports it.")


def save_boundary_plot(study: Any) -> None:
    """Put the current boundary plot on the study's dashboard page (after every trial)."""
    try:
        from optuna_dashboard import save_plotly_graph_object

        from study.plots import surface_figure
    except ImportError:
        return
    if not counts(study).complete:
        return
    try:
        save_plotly_graph_object(study, surface_figure(study), graph_object_id="boundary")
    except Exception as err:  # a plot must never stop a sweep
        say(f"the dashboard's boundary plot was not updated ({type(err).__name__}: {err})")


def trials_root(study: Any) -> Path:
    """The study's trial folders: ``storage/trials/<study>-<study_uid>/``.

    A study created before ``study_uid`` existed keeps ``storage/trials/<study>/``; workers
    never write into a folder that holds another trial's record either way.
    """
    import storage

    uid = study.user_attrs.get("study_uid")
    name = study.study_name
    return storage.trials_dir() / (f"{name}-{uid}" if uid else name)


def duplicate_retry(study: Any, trial: Any) -> int | None:
    """The number of an earlier retry of the same failed trial, if ``trial`` is a second one.

    Two ``shiftsweep sweep`` runs starting at once can both queue an interrupted trial again
    (each reads the trials, then adds one). Both retries carry the same ``retry_history``;
    the lowest-numbered is the one that runs. Trial numbers are handed out in order, so when a
    later one is popped the earlier one exists.
    """
    history = trial.system_attrs.get("retry_history")
    if not history:
        return None
    for other in study.get_trials(deepcopy=False):
        if other.number < trial.number and other.system_attrs.get("retry_history") == history:
            return other.number
    return None


def requeue_interrupted(study: Any) -> int:
    """Queue again the trials a Ctrl-C interrupted (a killed one is the heartbeat's job).

    A retry keeps the trial's replicate group and seed (``replicate_of``, ``replicate_seed``).
    """
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    queued = 0
    for t in trials:
        if (t.state == TrialState.FAIL and t.number not in retried
                and t.user_attrs.get("fail_reason") == "interrupted"):
            history = [*t.system_attrs.get("retry_history", []), t.number]
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=t.params, distributions=t.distributions,
                user_attrs={k: t.user_attrs[k] for k in REPLICATE_ATTRS if k in t.user_attrs},
                system_attrs={"failed_trial": history[0], "retry_history": history}))
            queued += 1
    return queued


def wait_for_stale(study: Any, grace_s: float, say: Any) -> None:
    """Running trials left by a killed worker: wait until their heartbeat goes stale."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if not is_heartbeat_enabled(study._storage):
        return
    _fail_stale(study)
    running = counts(study).running
    if not running:
        return
    say(f"{running} trial(s) are RUNNING: waiting up to {grace_s:.0f} s to see whether their "
        f"heartbeat stops (a killed trial is then queued again)")
    deadline = time.time() + grace_s + 2
    while time.time() < deadline and counts(study).running:
        time.sleep(1.0)
        _fail_stale(study)


# --- the coordinator ----------------------------------------------------------------------------
@dataclass
class WorkerPlan:
    processes: int
    gpus: list[str] | None  # CUDA_VISIBLE_DEVICES for this worker, None on CPU


def plan_workers(workers: int | None, gpus: str | None, gpus_per_trial: int,
                 processes: int, visible: list[str] | None = None) -> list[WorkerPlan]:
    """One worker per GPU group, or ``workers`` CPU workers of ``processes`` processes each.

    ``--gpus`` ids are indices among the visible GPUs (``visible``, default
    :func:`study.launch.visible_gpus`) or GPU-/MIG- UUIDs; each worker gets the entries to pin.
    """
    if gpus:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids or len(set(ids)) != len(ids):
            raise UserError(f"--gpus {gpus}: expected distinct GPU ids such as 0,1,2,3")
        if gpus_per_trial < 1 or len(ids) % gpus_per_trial:
            raise UserError(f"--gpus-per-trial {gpus_per_trial}: expected a divisor of the "
                            f"{len(ids)} GPUs in --gpus {gpus}")
        if visible is None:
            from study.launch import visible_gpus

            visible = visible_gpus()
        if not visible:
            raise UserError(f"--gpus {gpus}: this machine shows no CUDA device to torch; leave "
                            f"--gpus out to sweep on the CPU")
        pinned = []
        for g in ids:
            if g.isdigit() and int(g) < len(visible):
                pinned.append(visible[int(g)])
            elif g.startswith(("GPU-", "MIG-")):
                pinned.append(g)
            else:
                raise UserError(f"--gpus {gpus}: {g!r} is not a GPU here; expected indices "
                                f"0..{len(visible) - 1} or GPU-/MIG- UUIDs")
        ids = pinned
        groups = [ids[i:i + gpus_per_trial] for i in range(0, len(ids), gpus_per_trial)]
        if workers not in (None, len(groups)):
            raise UserError(f"--workers {workers}: --gpus {gpus} with --gpus-per-trial "
                            f"{gpus_per_trial} makes {len(groups)} workers")
        return [WorkerPlan(processes=gpus_per_trial, gpus=g) for g in groups]
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers}: expected an integer >= 0")
    if processes < 1:
        raise UserError(f"--processes {processes}: expected an integer >= 1")
    return [WorkerPlan(processes=processes, gpus=None) for _ in range(1 if workers is None else workers)]


def launch_worker(study_name: str, storage_url: str, plan: WorkerPlan, index: int, device: str,
                  mixed_precision: str, heartbeat_s: int, artifacts: Path, log_dir: Path,
                  n_workers: int) -> tuple[subprocess.Popen, Path]:
    """Start worker ``index``: one ``accelerate launch`` in its own process group.

    Its own group, so that the coordinator decides what a worker is sent: a Ctrl-C or a
    scheduler's SIGTERM reaches the coordinator, which forwards SIGINT to every worker's group
    (all ranks of a trial included) and waits for them to record their trials. A worker whose
    coordinator is gone (SIGKILL) stops by itself as if interrupted
    (``study.sweep_worker._watch_coordinator``).
    """
    from storage import redact
    from study.launch import launch_command

    log_dir.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    # The URL (it may hold a password) goes by environment, not on the command line that
    # `ps` shows and the log records.
    args = ["--study", study_name, "--heartbeat", str(heartbeat_s),
            "--artifacts", str(artifacts), "--worker-index", str(index)]
    dev = "cuda" if plan.gpus else device
    cmd, env = launch_command("study.sweep_worker", args, processes=plan.processes,
                              device=dev, mixed_precision=mixed_precision)
    env[STORAGE_ENV] = storage_url
    if plan.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(plan.gpus)
    elif "OMP_NUM_THREADS" not in os.environ:  # share the cores among all workers
        env["OMP_NUM_THREADS"] = str(max(1, cpus // (n_workers * plan.processes)))
    env["SHIFTSWEEP_COORDINATOR_PID"] = str(os.getpid())  # workers stop when it is gone
    log_path = log_dir / f"worker-{index}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        log.write(f"{STORAGE_ENV}={redact(storage_url)} " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log_path


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of the worker's group (its ranks) is still running."""
    if proc.poll() is None:
        return True
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_workers(procs: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT to every worker's group, then SIGKILL to what is left after ``grace_s``.

    An interrupted worker records its running trial as failed ("interrupted"), and the next
    ``shiftsweep sweep`` queues it again.
    """
    for proc in procs:
        if _group_alive(proc):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGINT)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(_group_alive(p) for p in procs):
        time.sleep(0.2)
    for proc in procs:
        if _group_alive(proc):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Any:
    """Inside, SIGTERM (a scheduler ending the job) raises KeyboardInterrupt like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Trials done, running and failed, elapsed time and ETA, from the storage."""

    def __init__(self, study: Any, workers: int, out: Any = sys.stderr, show: bool = True
                 ) -> None:
        self.study = study
        self.workers = workers
        self.out = out
        self.show = show  # False (--no-progress): no lines, the dashboard's plot still updated
        self.started = time.time()
        self.seen: set[int] = {t.number for t in study.get_trials(deepcopy=False)
                               if t.state.is_finished()}
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.last_line = ""
        self.last_print = 0.0
        self.durations: list[float] = []

    def line(self) -> str:
        c = counts(self.study)
        elapsed = time.time() - self.started
        remaining = max(0, c.target - c.done)
        if self.durations and remaining:
            per = statistics.fmean(self.durations)  # the mean: totals, not typical trials
            eta = f"ETA {_fmt_time(per * math.ceil(remaining / max(1, self.workers)))}"
        else:
            eta = "ETA after the first trial" if remaining else "ETA 0m00s"
        from study.analysis.boundary import undecided_now

        undecided = undecided_now(self.study)  # None unless the space has stop_when
        return (f"trials {c.done}/{c.target} done ({c.complete} complete, {c.failed} failed), "
                f"{c.running} running · elapsed {_fmt_time(elapsed)} · {eta}"
                + ("" if undecided is None else f" · boundary undecided {undecided:.0%}"))

    def poll(self) -> None:
        from optuna.trial import TrialState

        objective = self.study.user_attrs.get("objective", ["shift"])
        for t in self.study.get_trials(deepcopy=False):
            if not t.state.is_finished() or t.number in self.seen:
                continue
            self.seen.add(t.number)
            if t.datetime_start and t.datetime_complete:
                self.durations.append((t.datetime_complete - t.datetime_start).total_seconds())
            a = t.user_attrs
            point = (f"n_real={a.get('n_real')} m={a.get('dream_multiplier')} "
                     f"lr={a.get('lr', 0):.2g} batch_size={a.get('batch_size')} "
                     f"(n_eff {a.get('n_eff', '?')})")
            if "replicate_of" in a:  # seeds_per_point > 1: which seed of which point
                point += f" seed={a.get('seed')} (point of trial {a['replicate_of']})"
            if t.state == TrialState.COMPLETE:
                vals = ", ".join(f"{n} {v:+.4f}" for n, v in zip(objective, t.values, strict=False))
                self._print(f"trial {t.number} complete: {point} -> {vals}", force=True)
                save_boundary_plot(self.study)
            else:
                self._print(f"trial {t.number} failed: {point}: "
                            f"{a.get('fail_reason', 'see its error.log')}", force=True)
        self._print(self.line())

    def _print(self, text: str, force: bool = False) -> None:
        """Finished trials always get a line; the status line is redrawn (terminal) or printed
        when the counts change and at least once a minute (log file)."""
        if not self.show:
            return
        now = time.time()
        if self.tty:
            self.out.write("\r\033[K" + text + ("\n" if force else ""))
            self.out.flush()
            self.last_line = "" if force else text
            return
        if force:
            print(text, file=self.out, flush=True)
            return
        key = text.split(" · ")[0]
        if key != self.last_line or now - self.last_print >= 60:
            print(text, file=self.out, flush=True)
            self.last_line, self.last_print = key, now

    def close(self) -> None:
        if self.show and self.tty and self.last_line:
            self.out.write("\n")
            self.out.flush()


def run_workers(study: Any, study_name: str, storage_url: str, plans: list[WorkerPlan],
                device: str, mixed_precision: str, heartbeat_s: int, artifacts: Path,
                log_dir: Path, progress: bool = True, max_restarts: int = MAX_RESTARTS) -> int:
    """Launch the workers and watch them; returns the number of workers that failed for good.

    A worker that dies (killed, a crashed rank) while the study still needs trials is started
    again, up to ``max_restarts`` times per worker; its trial is retried once its heartbeat is
    stale. Ctrl-C or SIGTERM stops every worker (:func:`stop_workers`) and re-raises
    KeyboardInterrupt. The dashboard's boundary plot is updated after every finished trial,
    with or without progress lines.
    """
    def start(index: int) -> tuple[subprocess.Popen, Path]:
        return launch_worker(study_name, storage_url, plans[index], index, device,
                             mixed_precision, heartbeat_s, artifacts, log_dir, len(plans))

    from storage import GRACE_FACTOR, is_storage_error

    procs = [start(k) for k in range(len(plans))]
    restarts = [0] * len(plans)
    failed: set[int] = set()
    say(f"{len(procs)} worker(s) started; logs in {log_dir}")
    watcher = Progress(study, len(procs), show=progress)
    unreachable = False
    try:
        with sigterm_as_interrupt():
            while True:
                try:
                    watcher.poll()
                    for k, (proc, log_path) in enumerate(procs):
                        if k in failed or proc.poll() is None or proc.returncode == 0:
                            continue
                        if _no_space_line(log_path) or restarts[k] >= max_restarts:
                            failed.add(k)
                            continue
                        # The dead worker's trial is RUNNING until its heartbeat is stale; then
                        # it is queued again, and there is work for a new worker.
                        wait_for_stale(study, heartbeat_s * GRACE_FACTOR, say)
                        requeue_interrupted(study)  # its interrupted trial: for the new worker
                        if sweep_finished(study):
                            failed.add(k)
                            continue
                        restarts[k] += 1
                        say(f"worker {k} exited with code {proc.returncode} (its log: "
                            f"{log_path}); starting it again ({restarts[k]}/{max_restarts})")
                        procs[k] = start(k)
                    if unreachable:
                        say("the storage is reachable again")
                        unreachable = False
                except Exception as err:  # the database restarting: the workers wait for it
                    if not is_storage_error(err):
                        raise
                    if not unreachable:
                        say(f"the storage is unreachable ({type(err).__name__}); retrying")
                    unreachable = True
                if all(p.poll() is not None for p, _ in procs):
                    break
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        say("interrupted: stopping the workers (their running trials are queued again on the "
            "next run)")
        stop_workers([p for p, _ in procs])
        requeued = requeue_interrupted(study)  # so the study's counts are right at once
        if requeued:
            say(f"{requeued} interrupted trial(s) queued again; rerun the same command to go on")
        raise
    finally:
        with contextlib.suppress(Exception):  # a last look; the storage may be down
            watcher.poll()
        watcher.close()
    requeue_interrupted(study)  # e.g. a trial stopped by a full disk: it runs on the next run
    for k in sorted(failed):
        proc, log_path = procs[k]
        no_space = _no_space_line(log_path)
        if no_space:  # one line says it all; the launcher's traceback would only bury it
            say(no_space)
            continue
        tail = log_path.read_text(errors="replace").splitlines()[-12:]
        say(f"worker {k} exited with code {proc.returncode}; the end of {log_path}:")
        print("\n".join(tail), file=sys.stderr)
    return len(failed)


def _no_space_line(log_path: Path) -> str | None:
    """The worker's own line if it stopped because the trial folders' disk is full."""
    from study.sweep_worker import NO_SPACE_LINE

    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if NO_SPACE_LINE in line:
            return line.split("] ", 1)[-1]
    return None


def summary(study: Any, top: int = 5) -> str:
    """The best trials of the study as a small table."""
    from optuna.trial import TrialState

    objective = study.user_attrs.get("objective", ["shift"])
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return "no trial completed"
    from objectives.measures import MEASURES, OBJECTIVES

    sign = -1 if OBJECTIVES.get(objective[0]) == "minimize" else 1
    best = sorted(done, key=lambda t: -sign * t.values[0])[:top]
    shown = [m for m in MEASURES if m.summary and m.name != "n_eff"]
    cols = ["trial", "train_on", "n_real", "m", "n_eff", "lr", "batch", *[m.name for m in shown]]
    rows = [cols]
    for t in best:
        a = t.user_attrs
        rows.append([str(t.number), str(a.get("train_on", "chosen")), str(a.get("n_real")),
                     str(a.get("dream_multiplier")), str(a.get("n_eff")),
                     f"{a.get('lr', 0):.2g}", str(a.get("batch_size")),
                     *[m.format(a.get(m.name)) for m in shown]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return f"best {len(best)} of {len(done)} complete trials by {objective[0]}:\n" + "\n".join(lines)


def dashboard_command(storage_url: str, host: str, port: int, artifacts: Path) -> list[str]:
    """optuna-dashboard on the storage, with the artifacts (result, training log) attached."""
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) \
        or shutil.which("optuna-dashboard")
    if exe is None:
        raise UserError("optuna-dashboard is not installed (make install installs it)")
    target = storage_url.removeprefix("journal:")
    return [exe, target, "--host", host, "--port", str(port), "--artifact-dir", str(artifacts)]
