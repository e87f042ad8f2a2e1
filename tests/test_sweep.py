"""Sweeps through the real worker path: SQLite, a killed worker, two workers, PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import storage
from objectives import measures
from search_spaces import HERE as SPACES
from search_spaces import load_space

SMOKE = SPACES / "smoke.yaml"


def shiftsweep(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def smoke_space(tmp_path: Path, name: str = "smoke", **fixed) -> Path:
    """The shipped smoke space, with some fixed settings changed (e.g. longer trials)."""
    data = yaml.safe_load(SMOKE.read_text())
    data["fixed"].update(fixed)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def trials_of(name: str, url: str | None = None) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage.open_storage(url))
    return study.get_trials()


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every process below it (workers run in their own groups)."""
    import psutil

    root = psutil.Process(proc.pid)
    for p in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _complete(trials):
    return [t for t in trials if t.state == TrialState.COMPLETE]


@pytest.mark.slow
def test_sweep_records_resumes_and_exports(tmp_path):
    done = shiftsweep("sweep", "--space", "smoke", "--trials", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trials 3/3 done (3 complete, 0 failed)" in done.stderr
    trials = trials_of("smoke")
    assert len(trials) == 3 and len(_complete(trials)) == 3
    space = load_space("smoke")
    for t in trials:
        a = t.user_attrs
        assert set(t.params) == set(space.dimensions)
        assert a["n_eff"] == a["n_real"] * a["dream_multiplier"] == t.params["n_real"] * t.params[
            "dream_multiplier"]
        result = json.loads((Path(a["trial_dir"]) / "result.json").read_text())
        assert result["status"] == "complete"
        assert result["config"]["lr"] == t.params["lr"] == a["lr"]
        assert result["config"]["model"] == "tiny-random"
        assert t.values[0] == pytest.approx(result["measures"]["shift"]) == a["shift"]
        for key in ("adoption", "forgetting", "train_shift", "margin", "contrast_shift"):
            assert a[key] == pytest.approx(result["measures"][key])
        assert set(measures.NAMES) <= set(a), "every measure of the registry is a user attribute"
        assert a["train_on"] == "chosen" and a["dream_strategy"] == "template"
        assert a["probe_margins"] == pytest.approx([p["margin"] for p in result["probes"]])
        assert result["provenance"]["git"]["commit"] and result["provenance"]["versions"]["optuna"]
        # The result and the training log are Optuna artifacts (what the dashboard shows).
        names = sorted(json.loads(v)["filename"] for k, v in t.system_attrs.items()
                       if k.startswith("artifacts:"))
        assert names == ["result.json", "train_log.jsonl"]
    assert sum(1 for p in storage.artifacts_dir().iterdir()) == 6
    study = optuna.load_study(study_name="smoke", storage=storage.open_storage())
    assert study.metric_names == ["shift"]  # the dashboard names the objective
    assert len(study.user_attrs["probe_ids"]) == len(study.user_attrs["base_probe_margins"]) == 8
    # Distinct Sobol points, the first one included.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3

    again = shiftsweep("sweep", "--space", "smoke", "--trials", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "worker(s) started" not in again.stderr  # nothing to run: no worker launched
    assert [(t.number, t.datetime_complete) for t in trials_of("smoke")] == \
        [(t.number, t.datetime_complete) for t in trials]

    more = shiftsweep("sweep", "--space", "smoke", "--trials", "4")
    assert more.returncode == 0, more.stderr[-3000:]
    after = trials_of("smoke")
    assert len(after) == 4 and len(_complete(after)) == 4
    assert after[3].params not in [t.params for t in trials]

    # The dashboard: the study's page carries its note and the boundary plot.
    from optuna_dashboard._custom_plot_data import list_graph_object_ids

    store = storage.open_storage()
    study = optuna.load_study(study_name="smoke", storage=store)
    attrs = store.get_study_system_attrs(study._study_id)
    assert list_graph_object_ids(attrs) == ["boundary"]
    note = "".join(v for k, v in sorted(attrs.items()) if k.startswith("dashboard:note")
                   and isinstance(v, str))
    assert "n_real" in note and "dream_multiplier" in note and "qmc" in note
    assert_dashboard_serves(storage.default_url(), "smoke")

    out = tmp_path / "exports"
    plots = shiftsweep("plots", "--study", "smoke", "--out", str(out), "--no-static")
    assert plots.returncode == 0, plots.stderr[-3000:]
    for name in ("surface.html", "measures.html", "contour.html", "slice.html", "trials.csv"):
        assert (out / name).stat().st_size > 1000 or name == "trials.csv"
    lines = (out / "trials.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 4
    assert set(measures.NAMES) <= set(lines[0].split(",")), "every measure is a column of the export"

    # The report of this tiny-model sweep, from the storage alone, renders in a browser.
    report_dir = tmp_path / "report"
    done = shiftsweep("analyze", "--study", "smoke", "--out", str(report_dir), "--boot", "20",
                      "--no-static")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["n_trials"] == 4 and summary["verdict"]["label"] == "inconclusive"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=20000", "--dump-dom", (report_dir / "report.html").as_uri()]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout
        assert dom.count('class="main-svg"') >= 4 and "Verdict:" in dom


def assert_dashboard_serves(url: str, study_name: str) -> None:
    """`shiftsweep dashboard` answers on 127.0.0.1 and lists the study."""
    import urllib.request

    from study.launch import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "dashboard", "--storage", url,
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert body is not None, "the dashboard did not answer"
        assert study_name in [s["study_name"] for s in body["study_summaries"]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_killed_worker_trial_is_retried_and_finished_trials_kept(tmp_path):
    # Longer trials (40 epochs of the tiny model) so the kill lands inside one.
    space = smoke_space(tmp_path, "slow-smoke", epochs=40)
    args = ("sweep", "--space", str(space), "--trials", "3", "--heartbeat", "1")
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = storage.default_url()
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and victim is None:
        time.sleep(0.5)
        try:
            trials = trials_of("slow-smoke", url)
        except Exception:  # the study does not exist yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if _complete(trials) and running:
            victim = running[0]
    if victim is None:
        kill_tree(proc)
    assert victim is not None, "no trial was running after the first completed"
    kill_tree(proc)  # the coordinator, the launcher and the worker, at once
    proc.wait()
    before = trials_of("slow-smoke", url)
    finished = {t.number: t.datetime_complete for t in _complete(before)}
    assert [t.state for t in before if t.number == victim.number] == [TrialState.RUNNING]

    rerun = shiftsweep(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = trials_of("slow-smoke", url)
    complete = _complete(after)
    assert len(complete) == 3  # the right count: the killed trial does not count
    killed = next(t for t in after if t.number == victim.number)
    assert killed.state == TrialState.FAIL
    retry = [t for t in after if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == victim.params
    for number, when in finished.items():  # finished trials kept, not repeated
        assert next(t for t in after if t.number == number).datetime_complete == when
    # What the killed trial had recorded is still there.
    assert (Path(victim.user_attrs["trial_dir"]) / "config.json").exists()


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    space = smoke_space(tmp_path, "pair", epochs=10)
    done = shiftsweep("sweep", "--space", str(space), "--trials", "4", "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = trials_of("pair")
    complete = _complete(trials)
    assert len(complete) >= 4 and len(trials) <= 5  # may overshoot by at most workers - 1
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)


@pytest.mark.slow
def test_other_machines_join_a_postgres_study(tmp_path, postgres_url):
    space = smoke_space(tmp_path, "shared", epochs=10)
    first = shiftsweep("sweep", "--space", str(space), "--trials", "2", "--storage", postgres_url)
    assert first.returncode == 0, first.stderr[-3000:]
    machine_a = {t.user_attrs["worker"] for t in trials_of("shared", postgres_url)}
    # Raise the target without working on it here, then two workers join as other machines
    # would: the study's space, sampler and trial count come from the database.
    ready = shiftsweep("sweep", "--space", str(space), "--trials", "6", "--storage",
                       postgres_url, "--workers", "0")
    assert ready.returncode == 0 and "is ready" in ready.stderr, ready.stderr[-3000:]
    assert len(trials_of("shared", postgres_url)) == 2
    joiners = [subprocess.Popen([sys.executable, "-m", "study.cli", "worker", "--study", "shared",
                                 "--storage", postgres_url], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for proc in joiners:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    trials = trials_of("shared", postgres_url)
    complete = _complete(trials)
    assert 6 <= len(complete) <= 7 and len(complete) == len(trials)
    later = {t.user_attrs["worker"] for t in complete[2:]}
    assert later and not later & machine_a
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)


def test_sweep_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("high: 8", "high: 0"))
    done = shiftsweep("sweep", "--space", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "dimensions.n_real.low" in done.stderr and str(bad) in done.stderr

    missing = shiftsweep("worker", "--study", "nope")
    assert missing.returncode == 2 and "--study nope: no such study" in missing.stderr

    gpus = shiftsweep("sweep", "--space", "smoke", "--gpus", "0,1,2", "--gpus-per-trial", "2")
    assert gpus.returncode == 2 and "--gpus-per-trial 2" in gpus.stderr

    store = shiftsweep("sweep", "--space", "smoke", "--storage", "redis://x")
    assert store.returncode == 2 and "--storage redis://x" in store.stderr


def test_a_study_refuses_a_different_space(tmp_path):
    from objectives.errors import UserError
    from study.sweep import open_sweep

    store = storage.open_storage()
    open_sweep(store, "s", load_space("smoke"), 4)
    changed = tmp_path / "x.yaml"
    changed.write_text(SMOKE.read_text().replace("high: 1.0e-2", "high: 3.0e-2"))
    with pytest.raises(UserError, match="different search space"):
        open_sweep(store, "s", load_space(changed), 4)
    open_sweep(store, "s", load_space("smoke"), 8)  # only the trial count changed: fine


def test_interrupted_trials_are_queued_again_and_not_counted():
    from optuna.distributions import FloatDistribution

    from study import sweep

    store = storage.open_storage()
    study = sweep.open_sweep(store, "s", load_space("smoke"), 3)
    dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, value=0.1))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"lr": 2e-3}, distributions=dist,
        user_attrs={"fail_reason": "interrupted"}))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"lr": 3e-3}, distributions=dist,
        user_attrs={"fail_reason": "ValueError: nan"}))
    before = sweep.counts(study)
    assert (before.complete, before.failed, before.done) == (1, 2, 3) and before.finished
    assert sweep.requeue_interrupted(study) == 1
    assert sweep.requeue_interrupted(study) == 0  # only once
    after = sweep.counts(study)
    assert (after.complete, after.failed, after.waiting) == (1, 1, 1) and not after.finished
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert waiting[0].params == {"lr": 2e-3} and waiting[0].system_attrs["failed_trial"] == 1


def test_a_space_asking_for_more_real_examples_than_the_pool_stops_before_launching(tmp_path):
    space = tmp_path / "big.yaml"
    space.write_text(SMOKE.read_text().replace("high: 8, log: true}", "high: 5000, log: true}"))
    done = shiftsweep("sweep", "--space", str(space))
    assert done.returncode == 2 and "--n-real 5000" in done.stderr and "train.jsonl" in done.stderr
    assert str(space) in done.stderr
    assert "worker(s) started" not in done.stderr


@pytest.mark.slow
def test_a_trial_spread_over_two_processes(tmp_path):
    """GPUS_PER_TRIAL's path on CPU: the main process asks Optuna, the other follows (gloo DDP)."""
    done = shiftsweep("sweep", "--space", "smoke", "--trials", "2", "--processes", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    complete = _complete(trials_of("smoke"))
    assert len(complete) == 2
    for t in complete:
        result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
        assert result["processes"] == 2 and result["status"] == "complete"


@pytest.mark.gpu
def test_one_worker_per_gpu_group():
    import torch

    if torch.cuda.device_count() < 1:
        pytest.skip("needs a CUDA device")
    gpus = ",".join(str(i) for i in range(torch.cuda.device_count()))
    done = shiftsweep("sweep", "--space", "smoke", "--trials", "4", "--gpus", gpus)
    assert done.returncode == 0, done.stderr[-3000:]
    complete = _complete(trials_of("smoke"))
    assert len(complete) >= 4
    assert len({t.user_attrs["worker"] for t in complete}) == torch.cuda.device_count()


@pytest.mark.gpu
def test_bf16_sweep_on_a_gpu(tmp_path):
    """The CUDA + bf16 path: each trial is launched with bf16 and records where it ran."""
    import math

    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_bf16_supported():
        pytest.skip("needs a CUDA device with bf16")
    space = smoke_space(tmp_path, "smoke-bf16", mixed_precision="bf16")
    done = shiftsweep("sweep", "--space", str(space), "--trials", "3", "--gpus", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    complete = _complete(trials_of("smoke-bf16"))
    assert len(complete) == 3
    for t in complete:
        result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
        assert result["config"]["mixed_precision"] == "bf16"
        assert "cpu" not in result["provenance"]["device"]
        assert math.isfinite(t.value)


def test_gpu_ids_map_to_what_this_machine_shows(monkeypatch):
    from objectives.errors import UserError
    from study.launch import visible_gpus
    from study.sweep import plan_workers

    # Under a scheduler's CUDA_VISIBLE_DEVICES=2,3, "--gpus 0,1" must pin physical 2 and 3.
    plans = plan_workers(None, "0,1", 1, 1, visible=["2", "3"])
    assert [p.gpus for p in plans] == [["2"], ["3"]]
    pairs = plan_workers(None, "1,0,GPU-abc,MIG-x", 2, 1, visible=["4", "5"])
    assert [p.gpus for p in pairs] == [["5", "4"], ["GPU-abc", "MIG-x"]]
    assert all(p.processes == 2 for p in pairs)
    with pytest.raises(UserError, match=r"--gpus 0,2: '2' is not a GPU here; expected indices 0\.\.1"):
        plan_workers(None, "0,2", 1, 1, visible=["0", "1"])
    with pytest.raises(UserError, match="--gpus a: 'a' is not a GPU here"):
        plan_workers(None, "a", 1, 1, visible=["0"])
    with pytest.raises(UserError, match="--gpus 0: this machine shows no CUDA device"):
        plan_workers(None, "0", 1, 1, visible=[])

    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b,GPU-c")
    assert visible_gpus() == ["GPU-a", "GPU-b"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]


def test_asking_for_gpus_a_machine_lacks_is_an_error_before_anything_runs():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = shiftsweep("sweep", "--space", "smoke", "--gpus", "0")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--gpus 0: this machine shows no CUDA device" in done.stderr
    cuda = shiftsweep("sweep", "--space", "smoke", "--device", "cuda")
    assert cuda.returncode == 2 and "--device cuda: this machine shows no CUDA device" in cuda.stderr
    both = shiftsweep("sweep", "--space", "smoke", "--gpus", "0", "--device", "cpu")
    assert both.returncode == 2 and "choose one" in both.stderr
    procs = shiftsweep("sweep", "--space", "smoke", "--gpus", "0", "--processes", "2")
    assert procs.returncode == 2 and "use --gpus-per-trial" in procs.stderr
    assert "smoke" not in optuna.get_all_study_names(storage.open_storage())  # nothing started
    trial = shiftsweep("trial", "--n-real", "2", "--dream-multiplier", "1", "--lr", "1e-3",
                       "--batch-size", "2", "--device", "cuda")
    assert trial.returncode == 2 and "--device cuda: this machine shows no CUDA device" in trial.stderr
    assert not (Path(os.environ["SHIFTSWEEP_HOME"]) / "trials").exists()  # no trial folder left


def test_dashboard_refuses_a_port_it_cannot_serve():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = shiftsweep("dashboard", "--port", str(port))
    assert taken.returncode == 2 and "Traceback" not in taken.stderr
    assert f"--port {port}: cannot serve there" in taken.stderr
    wrong = shiftsweep("dashboard", "--port", "99999")
    assert wrong.returncode == 2 and "--port 99999: expected a TCP port" in wrong.stderr
