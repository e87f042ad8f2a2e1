"""``shiftsweep slurm``: the sbatch script, checked by bash and run with a stand-in Python
(this machine has no Slurm: the script's own logic runs, the commands it starts are logged)."""

from __future__ import annotations

import os
import subprocess

import pytest

from objectives.errors import UserError
from study.cli import main
from study.slurm import sbatch_script, wait_for_study

SECRET = "postgresql://sweep:hunter2@db-host/shiftsweep"


def _write(tmp_path, monkeypatch, *extra: str):
    monkeypatch.setenv("SHIFTSWEEP_STORAGE", SECRET)  # set when written: still not in the file
    out = tmp_path / "sweep.sbatch"
    assert main(["slurm", "--space", "listening-gpu", "--nodes", "3", "--gpus-per-node", "4",
                 "--out", str(out), *extra]) == 0
    return out


def _run(script, tmp_path, task: int, storage: str | None = SECRET):
    log = tmp_path / f"calls-{task}.log"
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/bash\necho "$@" >> {log}\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SHIFTSWEEP_STORAGE"}
    env.update(SHIFTSWEEP_PYTHON=str(stub), SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN="0",
               SLURM_JOB_ID="42")
    if storage:
        env["SHIFTSWEEP_STORAGE"] = storage
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=60)
    return done, log.read_text().splitlines() if log.exists() else []


def test_the_sbatch_script_is_a_requeueable_job_array(tmp_path, monkeypatch):
    script = _write(tmp_path, monkeypatch, "--gpus-per-trial", "2", "--partition", "gpu")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for directive in ("--array=0-2", "--nodes=1", "--gres=gpu:4", "--requeue",
                      "--signal=B:TERM@180", "--open-mode=append", "--partition=gpu"):
        assert f"#SBATCH {directive}\n" in text
    assert "hunter2" not in text and "db-host" not in text, "the URL comes from the environment"
    assert '"$SHIFTSWEEP_STORAGE"' in text
    # the worker replaces the batch shell, so Slurm's SIGTERM reaches it
    assert 'exec "$PYTHON" -m study.cli worker' in text

    done, first = _run(script, tmp_path, 0)
    assert done.returncode == 0, done.stderr
    # the CLI reads $SHIFTSWEEP_STORAGE itself: the URL is on no command line `ps` shows
    assert not any(SECRET in call or "--storage" in call for call in first)
    assert first == [
        "-m study.cli sweep --space listening-gpu --study listening-gpu "
        "--workers 0",
        "-m study.cli worker --study listening-gpu --gpus 0,1,2,3 "
        "--gpus-per-trial 2 --no-progress"]
    done, other = _run(script, tmp_path, 2)
    assert done.returncode == 0, done.stderr
    assert other[0] == "-m study.slurm wait --study listening-gpu --timeout 1800"
    assert other[1] == first[1], "every node runs the same workers; only the first creates"


def test_the_script_refuses_a_missing_or_single_machine_storage(tmp_path, monkeypatch):
    script = _write(tmp_path, monkeypatch)
    done, calls = _run(script, tmp_path, 0, storage=None)
    assert done.returncode != 0 and "set SHIFTSWEEP_STORAGE" in done.stderr and not calls
    done, calls = _run(script, tmp_path, 0, storage=f"sqlite:///{tmp_path}/s.db")
    assert done.returncode == 2 and "3 nodes need postgresql://" in done.stderr and not calls
    assert main(["slurm", "--space", "listening-gpu", "--nodes", "1", "--gpus-per-node", "2",
                 "--out", str(script)]) == 2, "an existing file is never overwritten"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"gpus_per_node": 4, "gpus_per_trial": 3}, "--gpus-per-trial 3: must divide"),
    ({"gpus_per_node": 0}, "--gpus-per-node 0"),
    ({"nodes": 0}, "--nodes 0"),
    ({"time_limit": "two days"}, "--time 'two days'"),
])
def test_bad_cluster_settings_are_user_errors(kwargs, message):
    settings = {"nodes": 2, "gpus_per_node": 4, **kwargs}
    with pytest.raises(UserError, match=message):
        sbatch_script("listening-gpu", **settings)


def test_waiting_for_the_study_on_a_real_storage(tmp_path, monkeypatch):
    import optuna

    url = f"sqlite:///{tmp_path / 's.db'}"
    monkeypatch.setenv("SHIFTSWEEP_STORAGE", url)
    with pytest.raises(UserError, match="--study late: not created"):
        wait_for_study("late", timeout_s=0.2, poll_s=0.1)
    optuna.create_study(study_name="late", storage=url)
    wait_for_study("late", timeout_s=5, poll_s=0.1)  # returns: it exists
