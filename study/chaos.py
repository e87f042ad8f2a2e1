"""``make chaos``: each fault a days-long sweep meets, injected into a real sweep.

    python -m study.chaos [--only NAME ...] [--keep] [--list]

Every scenario runs the real ``shiftsweep sweep`` (or ``make sweep``) on the built-in tiny
random model in a sandbox of its own (``SHIFTSWEEP_HOME`` in a temporary folder), injects one
fault with the operating system's own means (a signal, a server restart, an address-space
limit, a full filesystem), lets the sweep or the same command rerun finish, and compares the
study before and after. It prints one table row per fault:

- **lost**: a trial that was COMPLETE (or a trial folder whose ``result.json`` was complete)
  before the fault and is not COMPLETE with the same values afterwards;
- **run twice**: two COMPLETE trials of the same point and seed, a trial folder claimed by two
  trials or holding another trial's result, or more complete trials than the study's target;
- **ok**: the behaviour the fault calls for was seen (the row's "what happened" says it).

It exits 1 when any trial is lost or run twice, or any scenario did not behave as expected.
A scenario that this machine cannot stage (no PostgreSQL server, no permission to mount a
small filesystem) is reported as skipped. Nothing here is a hook in the product code: the
faults come from outside, as they do on a shared node.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT_S = 2  # stale after 3 missed beats: a killed trial is found within ~6 s
STOP_WITHIN_S = 15.0  # "stops within a few seconds" after Ctrl-C or SIGTERM, on loaded cores


class Skip(Exception):
    """This machine cannot stage the fault (e.g. no PostgreSQL, cannot mount)."""


class Unexpected(Exception):
    """The sweep did something the scenario did not plan for (it ended early, it hung)."""


@dataclass
class Outcome:
    fault: str
    storage: str
    happened: str
    lost: int = 0
    twice: int = 0
    expected: bool = False
    seconds: float = 0.0
    skipped: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.skipped or (self.expected and not self.lost and not self.twice)


# --- processes ----------------------------------------------------------------------------------
class Proc:
    """A command started in its own session, its output in a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> None:
        self.cmd = cmd
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in wait()/close()
        self.popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid
        self.started = time.time()
        self.ended: float | None = None

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None and self.ended is None:
            self.ended = time.time()
            self._out.close()
        return code

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout`` seconds."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.poll()

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Sandbox:
    """One scenario's storage root, its processes, and every process they started.

    Every process seen under a started command is remembered (pid and start time), so one
    that outlives its parent (a worker left behind by a killed coordinator) is still found,
    reported and stopped at the end.
    """

    def __init__(self, name: str, keep: bool = False) -> None:
        self.name = name
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix=f"shiftsweep-chaos-{name}-"))
        self.home = self.root / "home"
        self.home.mkdir()
        self.env = dict(os.environ)
        self.env.update({"SHIFTSWEEP_HOME": str(self.home), "HF_HUB_OFFLINE": "1",
                         "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
                             p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)})
        self.procs: list[Proc] = []
        self.seen: dict[int, float] = {}
        self.mounts: list[Path] = []
        self._stores: dict[str, Any] = {}

    # processes
    def start(self, cmd: list[str], label: str) -> Proc:
        proc = Proc(cmd, self.env, self.root / f"{label}.out")
        self.procs.append(proc)
        return proc

    def run(self, cmd: list[str], label: str, timeout: float) -> Proc:
        proc = self.start(cmd, label)
        if proc.wait(timeout) is None:
            self.stop_all()
            raise Unexpected(f"{label} did not end within {timeout:.0f} s")
        return proc

    def track(self) -> None:
        import psutil

        for proc in self.procs:
            try:
                tree = [psutil.Process(proc.pid)]
                tree += tree[0].children(recursive=True)
            except psutil.Error:
                continue
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault(p.pid, p.create_time())

    def alive(self) -> list[Any]:
        """Processes started under this sandbox that are still running."""
        import psutil

        self.track()
        left = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
        return left

    def workers(self) -> list[Any]:
        """The sweep worker processes (``python -m study.sweep_worker``), not their launchers."""
        import psutil

        found = []
        for p in self.alive():
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(p.cmdline())
                if "study.sweep_worker" in cmd and "accelerate" not in cmd \
                        and "torch.distributed" not in cmd:
                    found.append(p)
        return found

    def training(self) -> set[int]:
        """Trials whose optimizer steps have begun, from the worker logs (``[shiftsweep]
        trial #N: ...`` then ``training on ...``)."""
        started: set[int] = set()
        for log in sorted(self.home.rglob("worker-*.log"), key=lambda p: p.stat().st_mtime):
            current = None
            with contextlib.suppress(OSError):
                for line in log.read_text(errors="replace").splitlines():
                    found = re.search(r"trial #(\d+):", line)
                    if found:
                        current = int(found.group(1))
                    elif "training on" in line and current is not None:
                        started.add(current)
        return started

    def worker(self, rank: int = 0) -> Any:
        import psutil

        for p in self.workers():
            with contextlib.suppress(psutil.Error):
                if int(p.environ().get("RANK", "0")) == rank:
                    return p
        raise Unexpected(f"no sweep worker of rank {rank} is running")

    def stop_all(self) -> None:
        import psutil

        for p in self.alive():
            with contextlib.suppress(psutil.Error):
                p.kill()
        for proc in self.procs:
            proc.wait(10)

    def close(self) -> None:
        self.stop_all()
        for store in self._stores.values():
            with contextlib.suppress(Exception):
                store.engine.dispose()
        for mount in self.mounts:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # storage
    def url(self, kind: str, server: Any = None) -> str:
        if kind == "sqlite":
            return f"sqlite:///{self.home / 'studies.db'}"
        if kind == "journal":
            return f"journal:{self.home / 'studies.log'}"
        if server is None:
            raise Skip("PostgreSQL is not installed")
        return server.url

    def store(self, url: str) -> Any:
        """One storage connection per URL, for reading the study (and queueing trials)."""
        import storage

        if url not in self._stores:
            self._stores[url] = storage.open_storage(url)
        return self._stores[url]

    def trials(self, url: str, study: str) -> list[Any]:
        import optuna

        try:
            return optuna.load_study(study_name=study, storage=self.store(url)).get_trials()
        except KeyError:  # not created yet
            return []

    def space(self, name: str, n_trials: int, **kw: Any) -> Path:
        from study.testbed import tiny_space

        return tiny_space(self.root / f"{name}.yaml", n_trials, **kw)

    def mount_tmpfs(self, path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        if os.geteuid() != 0:
            if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
                raise Skip("mounting a small tmpfs needs root or passwordless sudo")
            cmd = ["sudo", "-n", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        self.mounts.append(path)


def sweep_cmd(space: Path, trials: int, url: str, study: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", "sweep", "--space", str(space), "--study", study,
            "--trials", str(trials), "--storage", url, "--heartbeat", str(HEARTBEAT_S),
            "--no-progress", *extra]


def make_sweep_cmd(space: Path, trials: int, url: str, study: str) -> list[str]:
    """``make sweep`` as a researcher types it (``-o install``: the set-up is already done)."""
    return ["make", "--no-print-directory", "-o", "install", "sweep", f"SPACE={space}",
            f"TRIALS={trials}", f"STUDY={study}", f"STORAGE={url}"]


# --- what the study holds -----------------------------------------------------------------------
@dataclass
class Snapshot:
    complete: dict[int, tuple[float, ...]]  # trial number -> values
    folders: dict[str, tuple[Any, Any]]  # complete result.json -> (trial index, shift)


def snapshot(sb: Sandbox, url: str, study: str) -> Snapshot:
    from optuna.trial import TrialState

    complete = {t.number: tuple(t.values) for t in sb.trials(url, study)
                if t.state == TrialState.COMPLETE}
    folders = {}
    for path in sorted((sb.home / "trials").rglob("result.json")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if data.get("status") == "complete":
                folders[str(path)] = (data.get("worker", {}).get("trial_index"),
                                      data.get("measures", {}).get("shift"))
    return Snapshot(complete, folders)


def count_lost(before: Snapshot, after: Snapshot) -> tuple[int, list[str]]:
    lost: set[str] = set()
    for number, values in before.complete.items():
        if after.complete.get(number) != values:
            lost.add(f"trial {number}")
    for path, record in before.folders.items():
        if after.folders.get(path) != record:
            lost.add(f"trial {record[0]}" if record[0] is not None else path)
    return len(lost), sorted(lost)


def count_twice(trials: list[Any], target: int) -> tuple[int, list[str]]:
    from optuna.trial import TrialState

    notes: list[str] = []
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    by_point: dict[tuple, list[int]] = {}
    for t in complete:
        key = (tuple(sorted(t.params.items())), t.user_attrs.get("seed"))
        by_point.setdefault(key, []).append(t.number)
    for numbers in by_point.values():
        if len(numbers) > 1:
            notes.append(f"trials {numbers} ran the same point and seed")
    by_folder: dict[str, list[int]] = {}
    for t in trials:
        if "trial_dir" in t.user_attrs and t.state != TrialState.WAITING:
            by_folder.setdefault(t.user_attrs["trial_dir"], []).append(t.number)
    for folder, numbers in by_folder.items():
        if len(numbers) > 1:
            notes.append(f"trials {numbers} wrote into {Path(folder).name}")
    for t in complete:
        result = Path(t.user_attrs.get("trial_dir", "/nonexistent")) / "result.json"
        with contextlib.suppress(OSError, ValueError):
            index = json.loads(result.read_text()).get("worker", {}).get("trial_index")
            if index != t.number:
                notes.append(f"trial {t.number}'s folder holds trial {index}'s result")
    if len(complete) > target:
        notes.append(f"{len(complete)} complete trials for a target of {target}")
    return len(notes), notes


def states(trials: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def fmt_states(trials: list[Any]) -> str:
    s = states(trials)
    return ", ".join(f"{v} {k}" for k, v in sorted(s.items())) or "no trials"


def wait_mid_trial(sb: Sandbox, proc: Proc, url: str, study: str, timeout: float = 300,
                   min_running_s: float = 0.5, after_complete: int = 1) -> int:
    """Wait until ``after_complete`` trials are COMPLETE and another is training.

    Training: the worker's log says it began the trial's optimizer steps ("training on ...")
    at least ``min_running_s`` ago, so the fault lands in the fine-tune, not in the imports.
    """
    from optuna.trial import TrialState

    deadline = time.time() + timeout
    seen: dict[int, float] = {}  # trial number -> when its training was first seen
    while time.time() < deadline:
        sb.track()
        if proc.poll() is not None:
            raise Unexpected(f"the sweep ended (exit {proc.returncode}) before the fault: "
                             + _last_line(proc.output()))
        if "worker(s) started" in proc.output():
            trials = sb.trials(url, study)
            done = sum(t.state == TrialState.COMPLETE for t in trials)
            training = sb.training()
            for t in trials:
                if t.state == TrialState.RUNNING and t.number in training:
                    seen.setdefault(t.number, time.time())
            ready = [n for n, when in seen.items() if time.time() - when >= min_running_s
                     and any(t.number == n and t.state == TrialState.RUNNING for t in trials)]
            if done >= after_complete and ready:
                return ready[0]
        time.sleep(0.3)
    raise Unexpected(f"no trial was training after {after_complete} completed ({timeout:.0f} s)")


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def _reason(t: Any) -> str:
    return str(t.user_attrs.get("fail_reason", ""))


def counted(trials: list[Any]) -> int:
    """Trials the study counts as done: complete, or failed and not queued again."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.state.name == "COMPLETE" or (t.state.name == "FAIL" and t.number not in retried)
               for t in trials)


def _retries(trials: list[Any], number: int) -> list[Any]:
    return [t for t in trials if number in t.system_attrs.get("retry_history", [])
            or t.system_attrs.get("failed_trial") == number]


def _finish(out: Outcome, sb: Sandbox, url: str, study: str, before: Snapshot,
            target: int) -> list[Any]:
    trials = sb.trials(url, study)
    out.lost, lost = count_lost(before, snapshot(sb, url, study))
    out.twice, twice = count_twice(trials, target)
    if lost:
        out.happened += "; LOST: " + ", ".join(lost)
    if twice:
        out.happened += "; TWICE: " + "; ".join(twice)
    return trials


# --- the faults ---------------------------------------------------------------------------------
@dataclass
class Context:
    keep: bool = False
    server: Any = None  # a started study.testbed.PostgresServer, or None


def kill_worker(ctx: Context, out: Outcome, kind: str) -> None:
    """SIGKILL of the worker process mid-trial (what the kernel's OOM killer does)."""
    sb = Sandbox(f"kill-{kind}", ctx.keep)
    try:
        url, study, target = sb.url(kind, ctx.server), f"chaos-kill-{kind}", 2
        cmd = sweep_cmd(sb.space("kill", target), target, url, study)
        first = sb.start(cmd, "sweep")
        victim = wait_mid_trial(sb, first, url, study)
        sb.worker(0).kill()
        code = first.wait(120)
        before = snapshot(sb, url, study)
        rerun = sb.run(cmd, "rerun", 400)
        trials = sb.trials(url, study)
        killed = next(t for t in trials if t.number == victim)
        retried = [t.number for t in _retries(trials, victim) if t.state.name == "COMPLETE"]
        complete = sum(t.state.name == "COMPLETE" for t in trials)
        out.happened = (f"killed in trial {victim}: sweep exit {code}; rerun exit "
                        f"{rerun.returncode}: trial {victim} {killed.state.name}"
                        + (f", retried as trial {retried[0]}" if retried else ", not retried")
                        + f"; {complete}/{target} complete ({fmt_states(trials)})")
        out.expected = (rerun.returncode == 0 and killed.state.name == "FAIL" and bool(retried)
                        and complete == target and "RUNNING" not in states(trials))
        _finish(out, sb, url, study, before, target)
    finally:
        sb.close()


def restart_postgres(ctx: Context, out: Outcome) -> None:
    """The server stopped (fast: connections cut) for 3 s mid-trial, then started again."""
    if ctx.server is None:
        raise Skip("PostgreSQL is not installed")
    sb = Sandbox("pg-restart", ctx.keep)
    try:
        url, study, target = ctx.server.url, "chaos-pg-restart", 2
        proc = sb.start(sweep_cmd(sb.space("restart", target), target, url, study),
                        "sweep")
        during = wait_mid_trial(sb, proc, url, study)
        before = snapshot(sb, url, study)
        ctx.server.stop()
        time.sleep(3.0)  # down for a few seconds, as a restart with a slow recovery is
        ctx.server.start()
        code = proc.wait(400)
        if code is None:
            sb.stop_all()
        trials = sb.trials(url, study)
        complete = sum(t.state.name == "COMPLETE" for t in trials)
        hit = next(t for t in trials if t.number == during)
        out.happened = (f"server down 3 s during trial {during}: sweep "
                        + ("hung" if code is None else f"exit {code}")
                        + f"; trial {during} {hit.state.name}"
                        + (f" ({_reason(hit)[:60]})" if _reason(hit) else "")
                        + f"; {complete}/{target} complete ({fmt_states(trials)})")
        if code not in (0, None):
            out.happened += "; " + _last_line(proc.output())
        out.expected = (code == 0 and counted(trials) == target and complete >= target - 1
                        and "RUNNING" not in states(trials))
        _finish(out, sb, url, study, before, target)
    finally:
        sb.close()


def kill_rank(ctx: Context, out: Outcome) -> None:
    """SIGKILL of rank 1 of a 2-process (gloo) trial: the group must not hang."""
    sb = Sandbox("rank", ctx.keep)
    try:
        url, study, target = sb.url("sqlite"), "chaos-rank", 2
        proc = sb.start(sweep_cmd(sb.space("rank", target), target, url, study,
                                  "--processes", "2"), "sweep")
        victim = wait_mid_trial(sb, proc, url, study, after_complete=0)
        before = snapshot(sb, url, study)
        sb.worker(1).kill()
        killed_at = time.time()
        code = proc.wait(240)
        waited = time.time() - killed_at
        if code is None:
            sb.stop_all()
        trials = sb.trials(url, study)
        hit = next(t for t in trials if t.number == victim)
        complete = sum(t.state.name == "COMPLETE" for t in trials)
        out.happened = (f"rank 1 killed in trial {victim}: sweep "
                        + ("hung for 240 s" if code is None else f"exit {code} after {waited:.0f} s")
                        + f"; trial {victim} {hit.state.name}"
                        + (f" ({_reason(hit)[:60]})" if _reason(hit) else "")
                        + f"; {complete}/{target} complete ({fmt_states(trials)})")
        out.expected = (code == 0 and hit.state.name == "FAIL" and counted(trials) == target
                        and complete >= 1 and "RUNNING" not in states(trials))
        _finish(out, sb, url, study, before, target)
    finally:
        sb.close()


def diverge(ctx: Context, out: Outcome) -> None:
    """lr 1e20: the second step's loss is NaN; the trial must stop there as ``diverged``."""
    sb = Sandbox("diverge", ctx.keep)
    try:
        url, study, target = sb.url("sqlite"), "chaos-diverge", 2
        dims = {"n_real": {"type": "int", "low": 4, "high": 8},
                "dream_multiplier": {"type": "int", "low": 1, "high": 2}}
        proc = sb.run(sweep_cmd(sb.space("diverge", target, dimensions=dims, lr=1e20, epochs=4),
                                target, url, study), "sweep", 400)
        before = snapshot(sb, url, study)
        trials = sb.trials(url, study)
        notes, good = [], 0
        for t in trials:
            a = t.user_attrs
            planned = a.get("epochs", 4) * math.ceil(a.get("n_real", 1) * a.get("dream_multiplier", 1)
                                                     / a.get("batch_size", 2))
            ran = _steps_run(t)
            reason = _reason(t)
            notes.append(f"trial {t.number} {t.state.name}"
                         + (f" '{reason[:50]}'" if reason else "")
                         + f" after {ran if ran is not None else '?'}/{planned} steps")
            if (t.state.name == "FAIL" and re.match(r"diverged\b", reason)
                    and ran is not None and ran < planned):
                good += 1
        out.happened = f"sweep exit {proc.returncode}: " + "; ".join(notes)
        out.expected = proc.returncode == 0 and len(trials) == target and good == target
        _finish(out, sb, url, study, before, target)
    finally:
        sb.close()


def _steps_run(t: Any) -> int | None:
    """The optimizer step a diverged trial stopped at: the one its fail reason names, or its
    training log's first non-finite loss. None if its log goes on past that step."""
    log = Path(t.user_attrs.get("trial_dir", "/nonexistent")) / "train_log.jsonl"
    losses: list[Any] = []
    with contextlib.suppress(OSError, ValueError):
        losses = [json.loads(line).get("loss") for line in log.read_text().splitlines() if line]
    bad = [i + 1 for i, v in enumerate(losses) if v is None or not math.isfinite(v)]
    found = re.search(r"step (\d+)", _reason(t))
    stop = int(found.group(1)) if found else (bad[0] if bad else None)
    return stop if stop is not None and len(losses) <= stop else None


def out_of_memory(ctx: Context, out: Outcome) -> None:
    """A memory limit on the worker, and a trial whose training step needs more than it allows.

    The limit is the kernel's (RLIMIT_AS, set from outside with ``prlimit`` while the first,
    small trial trains: its working set plus 512 MiB). The second trial's one step takes a
    batch of 6000 repeated examples, several GiB of activations and logits: its allocation
    fails in the forward pass, as an out-of-memory on a GPU does. The third is small again.
    """
    import optuna

    sb = Sandbox("oom", ctx.keep)
    try:
        url, study, target = sb.url("sqlite"), "chaos-oom", 3
        dims = {"n_real": {"type": "int", "low": 4, "high": 300},
                "dream_multiplier": {"type": "int", "low": 1, "high": 20},
                "batch_size": {"type": "categorical", "values": [2, 6000]}}
        space = sb.space("oom", target, dimensions=dims, dream_strategy="repeat",
                         micro_batch_size=6000, epochs=6)
        cmd = sweep_cmd(space, target, url, study)
        sb.run([*cmd, "--workers", "0"], "create", 300)
        queued = optuna.load_study(study_name=study, storage=sb.store(url))
        for point in ({"n_real": 4, "dream_multiplier": 1, "batch_size": 2},
                      {"n_real": 300, "dream_multiplier": 20, "batch_size": 6000},
                      {"n_real": 5, "dream_multiplier": 1, "batch_size": 2}):
            queued.enqueue_trial(point)
        proc = sb.start(cmd, "sweep")
        wait_mid_trial(sb, proc, url, study, after_complete=0, min_running_s=0.0)
        before = snapshot(sb, url, study)
        worker = sb.worker(0)
        limit = worker.memory_info().vms + (512 << 20)
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        code = proc.wait(400)
        if code is None:
            sb.stop_all()
        trials = sb.trials(url, study)
        big = next((t for t in trials if t.params.get("batch_size") == 6000), None)
        small = [t for t in trials if t.params.get("batch_size") == 2]
        out.happened = ("RLIMIT_AS = working set + 512 MiB: big-batch trial "
                        + (f"{big.number} {big.state.name}" if big else "missing")
                        + (f" '{_reason(big)[:70]}'" if big and _reason(big) else "")
                        + f"; sweep {'hung' if code is None else f'exit {code}'}; small trials "
                        + ", ".join(f"{t.number} {t.state.name}" for t in small))
        out.expected = (code == 0 and big is not None and big.state.name == "FAIL"
                        and re.match(r"oom\b", _reason(big), re.IGNORECASE) is not None
                        and [t.state.name for t in small] == ["COMPLETE", "COMPLETE"]
                        and "RUNNING" not in states(trials))
        _finish(out, sb, url, study, before, target)
    finally:
        sb.close()


def disk_full(ctx: Context, out: Outcome) -> None:
    """The trial folders' filesystem fills up mid-sweep (a 4 MiB tmpfs, then a filler file)."""
    sb = Sandbox("disk", ctx.keep)
    try:
        sb.mount_tmpfs(sb.home / "trials", "4m")
        url, study, target = sb.url("sqlite"), "chaos-disk", 2
        cmd = sweep_cmd(sb.space("disk", target), target, url, study)
        proc = sb.start(cmd, "sweep")
        wait_mid_trial(sb, proc, url, study, min_running_s=0.0)
        filler = sb.home / "trials" / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        code = proc.wait(300)
        if code is None:
            sb.stop_all()
        before = snapshot(sb, url, study)
        during = sb.trials(url, study)
        text = proc.output()
        said = [ln for ln in text.splitlines()
                if re.search(r"no space|ENOSPC|disk is full", ln, re.IGNORECASE)]
        traceback = "Traceback" in text
        filler.unlink()
        rerun = sb.run(cmd, "rerun", 400)
        trials = sb.trials(url, study)
        complete = sum(t.state.name == "COMPLETE" for t in trials)
        out.happened = (f"disk filled: sweep {'hung' if code is None else f'exit {code}'} with "
                        f"{len(said)} line(s) about space"
                        + (" and a traceback" if traceback else "")
                        + f" ({fmt_states(during)}); freed, rerun exit {rerun.returncode}: "
                        f"{complete}/{target} complete ({fmt_states(trials)})")
        if said:
            out.happened += f"; said: {said[0].strip()[:100]}"
        out.expected = (code not in (0, None) and len(said) >= 1 and not traceback
                        and rerun.returncode == 0 and complete == target
                        and "RUNNING" not in states(trials))
        _finish(out, sb, url, study, before, target)
    finally:
        sb.close()


def interrupt(ctx: Context, out: Outcome, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM to ``make`` (a scheduler's)."""
    sb = Sandbox(sig.name.lower(), ctx.keep)
    try:
        url, study, target = sb.url("sqlite"), f"chaos-{sig.name.lower()}", 2
        cmd = make_sweep_cmd(sb.space(sig.name.lower(), target), target, url, study)
        proc = sb.start(cmd, "make")
        victim = wait_mid_trial(sb, proc, url, study)
        sb.track()
        sent = time.time()
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # a terminal sends Ctrl-C to its whole foreground group
        else:
            os.kill(proc.pid, sig)  # the job's command; make passes SIGTERM on to its child
        code = proc.wait(60)
        stopped = time.time() - sent
        time.sleep(2.0)
        left = sb.alive()
        sb.stop_all()
        before = snapshot(sb, url, study)
        after_stop = sb.trials(url, study)
        running = [t.number for t in after_stop if t.state.name == "RUNNING"]
        rerun = sb.run(cmd, "rerun", 400)
        trials = sb.trials(url, study)
        complete = sum(t.state.name == "COMPLETE" for t in trials)
        out.happened = (f"sent in trial {victim}: make "
                        + ("still running after 60 s" if code is None
                           else f"exit {code} after {stopped:.1f} s")
                        + (f", {len(left)} process(es) left running" if left else "")
                        + (f", trial(s) {running} left RUNNING" if running else ", none RUNNING")
                        + f"; rerun exit {rerun.returncode}: {complete}/{target} complete "
                        f"({fmt_states(trials)})")
        out.expected = (code is not None and stopped <= STOP_WITHIN_S and not left and not running
                        and rerun.returncode == 0 and complete == target
                        and "RUNNING" not in states(trials))
        _finish(out, sb, url, study, before, target)
    finally:
        sb.close()


# name -> (fault, storage, scenario)
SCENARIOS: dict[str, tuple[str, str, Callable[[Context, Outcome], None]]] = {
    "kill-sqlite": ("SIGKILL of a worker mid-trial", "sqlite",
                    lambda ctx, out: kill_worker(ctx, out, "sqlite")),
    "kill-postgresql": ("SIGKILL of a worker mid-trial", "postgresql",
                        lambda ctx, out: kill_worker(ctx, out, "postgresql")),
    "kill-journal": ("SIGKILL of a worker mid-trial", "journal",
                     lambda ctx, out: kill_worker(ctx, out, "journal")),
    "postgres-restart": ("PostgreSQL server restarted mid-sweep", "postgresql", restart_postgres),
    "rank-kill": ("SIGKILL of one rank of a 2-process trial", "sqlite", kill_rank),
    "diverged": ("diverging run (lr 1e20)", "sqlite", diverge),
    "oom": ("out of memory in a trial", "sqlite", out_of_memory),
    "disk-full": ("no space left for trial folders", "sqlite", disk_full),
    "sigint": ("Ctrl-C (SIGINT) of make sweep", "sqlite",
               lambda ctx, out: interrupt(ctx, out, signal.SIGINT)),
    "sigterm": ("SIGTERM of make sweep", "sqlite",
                lambda ctx, out: interrupt(ctx, out, signal.SIGTERM)),
}
NEEDS_POSTGRES = ("kill-postgresql", "postgres-restart")


def run_scenario(name: str, ctx: Context) -> Outcome:
    """Run one scenario; a machine that cannot stage it gives a skipped row."""
    started = time.time()
    fault, kind, scenario = SCENARIOS[name]
    out = Outcome(fault, kind, "")
    try:
        scenario(ctx, out)
    except Skip as why:
        out.happened, out.skipped = f"skipped: {why}", True
    except Unexpected as err:
        out.happened, out.expected = f"unexpected: {err}", False
    out.seconds = time.time() - started
    return out


def table(rows: list[Outcome]) -> str:
    lines = ["| fault | storage | what happened | lost | run twice | ok | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "skipped" if r.skipped else ("yes" if r.ok else "NO")
        lines.append(f"| {r.fault} | {r.storage} | {r.happened} | {r.lost} | {r.twice} | {ok} "
                     f"| {r.seconds:.0f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def postgres(needed: bool):
    """One PostgreSQL server for every scenario that needs one (None where not installed)."""
    from study.testbed import PostgresServer, postgres_bin

    if not needed or postgres_bin() is None:
        yield None
        return
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=None,
                        help="run these scenarios only")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's sandbox folder")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{k}: {fault} ({kind})" for k, (fault, kind, _) in SCENARIOS.items()))
        return 0
    names = args.only or list(SCENARIOS)
    rows = []
    started = time.time()
    with postgres(any(n in NEEDS_POSTGRES for n in names)) as server:
        ctx = Context(keep=args.keep, server=server)
        for name in names:
            print(f"chaos: {name} ...", file=sys.stderr, flush=True)
            row = run_scenario(name, ctx)
            print(f"chaos: {name}: {'ok' if row.ok else 'NOT OK'} ({row.seconds:.0f} s): "
                  f"{row.happened}", file=sys.stderr, flush=True)
            rows.append(row)
    print(table(rows))
    lost, twice = sum(r.lost for r in rows), sum(r.twice for r in rows)
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows)} faults in {time.time() - started:.0f} s: {lost} trial(s) lost, "
          f"{twice} run twice, {len(bad)} not as expected"
          + (f", {sum(r.skipped for r in rows)} skipped" if any(r.skipped for r in rows) else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
