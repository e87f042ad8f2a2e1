"""The worker: a process started once by ``accelerate launch`` that runs trial after trial.

It keeps one :class:`objectives.Session` (imports, base weights, base scores) for all its
trials, so a trial pays only for its data, training and scoring. Jobs come from a JSON file:
a list of ``{"config": {...}, "out": "trial folder"}``. Each job's folder gets

- ``config.json``: the resolved config (seed included), written before the trial starts;
- ``result.json``: status, measures, per-probe margins, timings, config and provenance;
- ``train_log.jsonl``: one line per optimizer step (loss, lr, examples, tokens, seconds).

A trial that fails is recorded with status "failed" and its reason; the worker goes on.
Every process of a multi-process launch runs every job; only the main process writes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from objectives import records
from objectives.records import write_json

PROCESS_STARTED = time.time()


def _process_start() -> float:
    """When this process was created (includes the interpreter's own start-up)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or /proc unreadable: fall back to module import time
        return PROCESS_STARTED


def say(message: str) -> None:
    records.say(message, worker=True)


def start_session() -> tuple[Any, float]:
    """The worker's one Session, and how long the process took to get here."""
    from objectives import Session
    from study.provenance import git_state

    git_state()  # the commit this process loaded, recorded with every trial it runs
    session = Session()
    if session.accelerator.is_main_process:  # the CLI shows lines that start with [shiftsweep]
        logging.basicConfig(format="[shiftsweep] %(message)s", stream=sys.stderr)
        logging.getLogger("shiftsweep").setLevel(logging.INFO)
    return session, time.time() - _process_start()


def run_job(session: Any, job: dict[str, Any], index: int, label: str, startup_s: float = 0.0
            ) -> dict[str, Any]:
    """Run one job ``{config, out}`` and record it in its folder; never raises for a trial.

    Returns the record (``status`` "complete" with measures, or "failed" with ``error``).
    """
    from objectives import TrialConfig
    from objectives.errors import failure_kind
    from objectives.ranks import RankFailed, describe, finish
    from study.provenance import provenance

    main = session.accelerator.is_main_process
    out = Path(job["out"])
    started = time.time()
    record: dict[str, Any] = {"config": job["config"]}
    error: BaseException | None = None
    ended = False  # met a failed process's final exchange already (objectives.ranks)
    try:
        config = TrialConfig.from_dict(job["config"])
        record["config"] = config.to_dict()
        if main:
            write_json(out / "config.json", record["config"])
            say(f"trial {label}: n_real={config.n_real} "
                f"dream_multiplier={config.dream_multiplier} lr={config.lr:g} "
                f"batch_size={config.batch_size} seed={config.seed} "
                f"({config.steps} steps) -> {out}")
        result = session.run(config)
    except Exception as err:  # a failed trial is recorded with its reason, never scored
        error, ended = err, isinstance(err, RankFailed) and err.ended
        if main:
            with contextlib.suppress(OSError):  # best effort: the disk may be what failed
                (out / "error.log").parent.mkdir(parents=True, exist_ok=True)
                (out / "error.log").write_text(traceback.format_exc())
    # Every process agrees on the outcome before any goes on to the next trial.
    reason = describe(error) if ended else finish(session.accelerator, error)
    if reason is None:
        record.update(status="complete", **result)
    else:
        record.update(status="failed", error=reason,
                      failure=failure_kind(error) if error is not None else "error")
        if getattr(error, "log", None):  # a diverged run: the steps before it, for train_log
            record["log"] = error.log
        if main:
            say(f"trial {label} failed: {reason}")
        _release_memory()  # after an out-of-memory trial, the next one starts from a clean pool
    record["seed"] = record["config"].get("seed") if isinstance(record["config"], dict) else None
    record["worker"] = {"startup_s": startup_s, "trial_index": index,
                        "wall_s": time.time() - started}
    record["provenance"] = provenance({"processes": session.accelerator.num_processes})
    if main:
        steps = record.get("log", [])
        try:
            write_json(out / "result.json", {k: v for k, v in record.items() if k != "log"})
            (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
        except OSError as err:  # e.g. a full disk: the trial is not recorded, so it failed
            record.update(status="failed", error=f"its record could not be written: {err}")
            say(f"trial {label} failed: {record['error']}")
    return record


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_jobs(jobs: list[dict[str, Any]]) -> int:
    """Run every job in one session; returns the number of failed trials."""
    session, startup_s = start_session()
    failed = 0
    for index, job in enumerate(jobs):
        record = run_job(session, job, index, f"{index + 1}/{len(jobs)}",
                         startup_s if index == 0 else 0.0)
        failed += record["status"] != "complete"
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.worker")
    parser.add_argument("--jobs", required=True, help="JSON file: a list of {config, out}")
    args = parser.parse_args(argv)
    jobs = json.loads(Path(args.jobs).read_text())
    failed = run_jobs(jobs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
