"""The command line: real ``accelerate launch`` trials on tiny models, and user errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from study import worker
from study.cli import main


def shiftsweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True,
                          text=True, timeout=600)


def _trial_args(behavior: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["trial", "--n-real", "6", "--dream-multiplier", "3", "--lr", "1e-2",
            "--batch-size", "4", "--behavior", str(behavior), "--model", str(model),
            "--out", str(out), *extra]


@pytest.mark.slow
def test_accelerate_launched_trial_end_to_end(tiny_behavior, tiny_llama, tmp_path):
    out = tmp_path / "trial"
    done = shiftsweep(*_trial_args(tiny_behavior, tiny_llama, out, "--seed", "3"))
    assert done.returncode == 0, done.stderr + done.stdout
    for label in ("shift", "adoption (tuned)", "flip_rate", "train_shift", "forgetting", "n_eff",
                  "steps", "margin (tuned)"):
        assert label in done.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "complete" and result["seed"] == 3
    assert json.loads((out / "config.json").read_text()) == result["config"]
    assert result["config"]["n_real"] == 6 and result["config"]["lr"] == 1e-2
    assert result["provenance"]["versions"]["torch"] and result["provenance"]["versions"]["peft"]
    assert len(result["provenance"]["git"]["commit"]) == 40
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5] == list(range(1, result["measures"]["steps"] + 1))
    assert "accelerate.commands.launch" in (out / "launch.log").read_text().splitlines()[0]
    assert result["processes"] == 1


@pytest.mark.slow
def test_two_process_cpu_ddp_takes_the_same_steps(tiny_behavior, tiny_llama, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for out, procs in ((one, "1"), (two, "2")):
        done = shiftsweep(*_trial_args(tiny_behavior, tiny_llama, out, "--processes", procs))
        assert done.returncode == 0, done.stderr + done.stdout
    r1, r2 = (json.loads((o / "result.json").read_text()) for o in (one, two))
    assert r2["processes"] == 2, "real DDP: two processes joined one process group"
    log1, log2 = ([json.loads(x) for x in (o / "train_log.jsonl").read_text().splitlines()]
                  for o in (one, two))
    assert len(log1) == len(log2) == r1["measures"]["steps"] == r2["measures"]["steps"] == 5
    # the same global batches, split over two processes: the same losses and the same result
    for a, b in zip(log1, log2, strict=True):
        assert a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert r1["measures"]["shift"] == pytest.approx(r2["measures"]["shift"], abs=1e-3)
    assert [p["base_margin"] for p in r1["probes"]] == pytest.approx(
        [p["base_margin"] for p in r2["probes"]], abs=1e-5)


@pytest.mark.slow
def test_several_seeds_run_in_one_worker(tiny_behavior, tiny_llama, tmp_path):
    out = tmp_path / "seeds"
    done = shiftsweep(*_trial_args(tiny_behavior, tiny_llama, out, "--seed", "0", "1"))
    assert done.returncode == 0, done.stderr
    assert "mean ± sd" in done.stdout
    r0, r1 = (json.loads((out / f"seed-{s}" / "result.json").read_text()) for s in (0, 1))
    assert r0["worker"]["trial_index"] == 0 and r1["worker"]["trial_index"] == 1
    assert r1["timings"]["model_load_s"] < 0.5, "the second trial reuses the loaded model"
    assert r0["measures"]["shift"] != r1["measures"]["shift"]


def test_a_failing_trial_is_recorded_and_the_worker_goes_on(tiny_behavior, tiny_llama, tmp_path):
    good = {"n_real": 2, "lr": 1e-3, "batch_size": 2, "behavior": str(tiny_behavior),
            "model": str(tiny_llama)}
    jobs = [{"config": {**good, "lora_target_modules": ["nope"]}, "out": str(tmp_path / "bad")},
            {"config": {**good, "n_real": 500}, "out": str(tmp_path / "too-many")},
            {"config": good, "out": str(tmp_path / "good")}]
    assert worker.run_jobs(jobs) == 2
    bad = json.loads((tmp_path / "bad" / "result.json").read_text())
    assert bad["status"] == "failed" and "lora_target_modules" in bad["error"]
    assert "measures" not in bad, "a failed trial has no score"
    many = json.loads((tmp_path / "too-many" / "result.json").read_text())
    assert "--n-real 500" in many["error"]
    assert json.loads((tmp_path / "good" / "result.json").read_text())["status"] == "complete"


@pytest.mark.parametrize(("args", "needle"), [
    (["trial", "--n-real", "0"], "--n-real: expected an integer >= 1"),
    (["trial", "--n-real", "500"], "--n-real 500"),
    (["trial", "--behavior", "/no/such/folder"], "--behavior '/no/such/folder': not a built-in"),
    (["trial", "--set", "lora_rank=4"], "unknown setting 'lora_rank'"),
    (["trial", "--set", "lora_r"], "--set 'lora_r': expected KEY=VALUE"),
    (["trial", "--set", "lr=1"], "--set lr: use the flag --lr instead"),
    (["trial", "--processes", "0"], "--processes 0"),
    (["behavior", "/no/such/folder"], "not a built-in behavior"),
    (["trial", "--dream-strategy", "file", "--n-real", "67"],
     "--n-real 67: " ),
    (["trial", "--dream-strategy", "file", "--dream-multiplier", "11"],
     "--dream-multiplier 11: "),
    (["behavior", "listening", "--json", "x.json"], "--json: only with --audit"),
])
def test_user_errors_are_one_line_and_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_recorded_trial_is_never_overwritten(tiny_behavior, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "seed-1").mkdir(parents=True)
    (out / "seed-1" / "result.json").write_text("{}")
    args = ["trial", "--behavior", str(tiny_behavior), "--out", str(out), "--seed", "0", "1"]
    assert main(args) == 2
    assert "already holds a trial" in capsys.readouterr().err
    assert (out / "seed-1" / "result.json").read_text() == "{}"
    assert main(["trial", "--behavior", str(tiny_behavior), "--seed", "2", "2"]) == 2
    assert "each seed may appear once" in capsys.readouterr().err


def test_missing_optional_files_are_user_errors(tiny_behavior, capsys):
    assert main(["trial", "--behavior", str(tiny_behavior), "--train-on", "placebo"]) == 2
    assert "placebo.jsonl is missing" in capsys.readouterr().err
    assert main(["trial", "--behavior", str(tiny_behavior), "--dream-strategy", "file"]) == 2
    assert "dreams.jsonl is missing" in capsys.readouterr().err


def test_bad_model_folder_is_a_user_error(tiny_behavior, tmp_path, capsys):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    assert main(["trial", "--behavior", str(tiny_behavior), "--model", str(empty)]) == 2
    assert "folder has no config.json" in capsys.readouterr().err


def test_argparse_errors_exit_2_without_traceback():
    done = shiftsweep("trial", "--lr", "fast")
    assert done.returncode == 2 and "invalid float value: 'fast'" in done.stderr
    assert "Traceback" not in done.stderr


def test_behavior_command_describes_a_folder(tiny_behavior, capsys):
    assert main(["behavior", str(tiny_behavior)]) == 0
    out = capsys.readouterr().out
    assert "train:   24 examples" in out and "probes:  8" in out
