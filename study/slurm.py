"""``shiftsweep slurm``: an sbatch script that runs a study over a Slurm cluster's GPU nodes.

The script is a job array, one array task per node; each task starts the workers of its node
(``shiftsweep worker --gpus 0,...,N-1 --gpus-per-trial G``: one worker per GPU group). The
study is created once, by the array's first task (``shiftsweep sweep --workers 0``, which
resumes it when it exists); the other tasks wait for it to exist. The storage URL is read
from ``$SHIFTSWEEP_STORAGE`` when the job runs and is never written into the script.

Preemption: ``--requeue`` puts a preempted task back in the queue, and ``--signal=B:TERM@S``
sends SIGTERM to the batch step S seconds before the kill. The batch shell ``exec``s the
worker, so the worker is the process that receives it and stops like on Ctrl-C: its running
trial is marked interrupted and queued again, and a requeued task picks the study up.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path

from objectives.errors import UserError
from storage import STORAGE_ENV  # the CLI reads the URL from it


def sbatch_script(space: str, nodes: int, gpus_per_node: int, gpus_per_trial: int = 1,
                  study: str | None = None, time_limit: str = "1-00:00:00",
                  partition: str | None = None, cpus_per_node: int | None = None,
                  artifacts: Path | None = None, signal_s: int = 180,
                  log_dir: Path | None = None) -> str:
    """The sbatch script's text; bad settings are a UserError naming the flag."""
    from search_spaces import load_space

    for flag, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node),
                        ("--gpus-per-trial", gpus_per_trial)):
        if value < 1:
            raise UserError(f"{flag} {value}: expected an integer >= 1")
    if gpus_per_node % gpus_per_trial:
        raise UserError(f"--gpus-per-trial {gpus_per_trial}: must divide --gpus-per-node "
                        f"{gpus_per_node} (one worker per group of {gpus_per_trial} GPUs)")
    if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", time_limit):
        raise UserError(f"--time {time_limit!r}: expected Slurm's D-HH:MM:SS, HH:MM:SS or MM")
    if signal_s < 10:
        raise UserError(f"--signal-s {signal_s}: expected >= 10 seconds before the kill")
    loaded = load_space(space)  # a bad space file is an error now, not on the cluster
    name = study or loaded.name
    root = Path(__file__).resolve().parent.parent
    logs = (log_dir or root / "storage" / "slurm").resolve()  # must exist when the job starts
    gpus = ",".join(str(g) for g in range(gpus_per_node))
    q = shlex.quote
    sweep_args = ["--space", str(Path(space).resolve()) if Path(space).is_file() else space,
                  "--study", name]
    common = []
    if artifacts is not None:
        common += ["--artifacts", str(artifacts.resolve())]
    directives = [f"--job-name=shiftsweep-{name}", f"--array=0-{nodes - 1}", "--nodes=1",
                  "--ntasks=1", f"--gres=gpu:{gpus_per_node}", f"--time={time_limit}",
                  "--requeue", f"--signal=B:TERM@{signal_s}", "--open-mode=append",
                  f"--output={logs}/%x-%A_%a.out"]
    if cpus_per_node:
        directives.append(f"--cpus-per-task={cpus_per_node}")
    if partition:
        directives.append(f"--partition={partition}")
    single = nodes == 1
    lines = [
        "#!/bin/bash",
        f"# Written by `shiftsweep slurm` on {time.strftime('%Y-%m-%d %H:%M')}: study {name!r}, "
        f"space {space}, {nodes} node(s) x {gpus_per_node} GPU(s), "
        f"{gpus_per_node // gpus_per_trial} worker(s) of {gpus_per_trial} GPU(s) per node.",
        f"# Submit:  export {STORAGE_ENV}=postgresql://USER@HOST/DB ; sbatch THIS_FILE",
        "# (keep the password out of the URL: libpq reads ~/.pgpass or PGPASSWORD). Every",
        "# task resumes the study; resubmit the same file to go on after the time limit.",
        *[f"#SBATCH {d}" for d in directives],
        "set -euo pipefail",
        f': "${{{STORAGE_ENV}:?set {STORAGE_ENV} to the database URL of the study before sbatch}}"',
    ]
    if not single:
        lines += [
            f'case "${STORAGE_ENV}" in',
            '  sqlite:*|journal:*)',
            f'    echo "shiftsweep: {STORAGE_ENV}: SQLite and journal files serve one machine; '
            f'{nodes} nodes need postgresql:// or mysql://" >&2',
            "    exit 2;;",
            "esac",
        ]
    lines += [
        f'cd "${{SHIFTSWEEP_DIR:-{root}}}"',
        f'PYTHON="${{SHIFTSWEEP_PYTHON:-{sys.executable}}}"',
        "export PYTHONUNBUFFERED=1",
        'task="${SLURM_ARRAY_TASK_ID:-0}"',
        'if [ "$task" = "${SLURM_ARRAY_TASK_MIN:-0}" ]; then',
        "  # creates the study once (on a requeue or a resubmission it resumes it)",
        f'  "$PYTHON" -m study.cli sweep {" ".join(q(a) for a in sweep_args + common)} '
        '--workers 0',
        "else",
        "  # the first task creates the study; wait for it (30 minutes at most)",
        f'  "$PYTHON" -m study.slurm wait --study {q(name)} --timeout 1800',
        "fi",
        "# exec: the worker itself gets Slurm's SIGTERM before a preemption or the time limit",
        f'exec "$PYTHON" -m study.cli worker --study {q(name)} '
        f'{" ".join(q(a) for a in common)}{" " if common else ""}--gpus {gpus} '
        f"--gpus-per-trial {gpus_per_trial} --no-progress",
    ]
    return "\n".join(lines) + "\n"


def wait_for_study(name: str, timeout_s: float, poll_s: float = 10.0) -> None:
    """Block until study ``name`` exists in ``$SHIFTSWEEP_STORAGE`` (or time out)."""
    import os

    import optuna

    import storage

    url = os.environ.get(STORAGE_ENV)
    if not url:
        raise UserError(f"{STORAGE_ENV} is not set")
    store = storage.open_storage(storage.normalize_url(url))
    deadline = time.monotonic() + timeout_s
    while name not in optuna.study.get_all_study_names(store):
        if time.monotonic() > deadline:
            raise UserError(f"--study {name}: not created in {storage.redact(url)} within "
                            f"{timeout_s:g} s (the array's first task creates it)")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m study.slurm")
    sub = parser.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait", help="wait until a study exists in $SHIFTSWEEP_STORAGE")
    wait.add_argument("--study", required=True)
    wait.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    try:
        wait_for_study(args.study, args.timeout)
    except UserError as err:
        print(f"shiftsweep: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
