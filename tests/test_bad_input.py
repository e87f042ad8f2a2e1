"""Bad input, table-driven: every case runs the real CLI in a subprocess against a storage
root that already holds studies and trial folders.

Each case must end with a non-zero exit, one stderr line that names the file, field or flag
and what was expected, no traceback, nothing on stdout, and every file under the storage
root (the SQLite and journal studies, the trial folders, the artifacts) byte-for-byte as it
was, with no file added or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import behavior_rows, write_behavior

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "search_spaces" / "smoke.yaml"
EXISTING = "existing"  # a sweep study with one complete trial, in the root's studies.db
PLAIN = "plain"  # an Optuna study that shiftsweep did not create, in the same file
TRIAL_DIR = "20240101-000000-n6-m10-lr0.0001-bs8"  # a recorded `shiftsweep trial` folder


@dataclass
class Ctx:
    """What a case builds its arguments from: the populated root and a scratch folder."""

    home: Path
    tmp: Path
    request: pytest.FixtureRequest

    @property
    def db(self) -> str:
        return f"sqlite:///{self.home / 'studies.db'}"

    def behavior(self, edit: Callable[[dict], None] | None = None, **files: str) -> str:
        """A tiny behavior folder; ``edit`` changes its rows, ``files`` replace file texts."""
        rows = behavior_rows()
        if edit:
            edit(rows)
        folder = write_behavior(self.tmp / "behavior", rows)
        for name, text in files.items():
            path = folder / name.replace("_", ".")
            if text is None:
                path.unlink()
            else:
                path.write_text(text)
        return str(folder)

    def space(self, edit: Callable[[dict], None] | None = None, text: str | None = None) -> str:
        """A search-space file: the smoke space changed by ``edit``, or ``text`` as it is."""
        path = self.tmp / "space.yaml"
        if text is None:
            data = yaml.safe_load(SMOKE.read_text())
            edit(data)
            text = yaml.safe_dump(data)
        path.write_text(text)
        return str(path)

    def file(self, name: str, content: bytes | str = "x\n") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)


def _populate(home: Path) -> None:
    """A storage root as a researcher's would be: a sweep study with a complete trial (and its
    trial folder and artifact), a study made by plain Optuna, a journal study, a trial folder."""
    import optuna

    import storage
    from search_spaces import load_space
    from study.sweep import open_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SMOKE)
    store = storage.open_storage(f"sqlite:///{home / 'studies.db'}")
    study = open_sweep(store, EXISTING, space, 4)
    params = {"n_real": 2, "dream_multiplier": 2, "lr": 1e-3, "batch_size": 2}
    folder = home / "trials" / EXISTING / "trial-0000"
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=space.distributions(), values=[0.25],
        user_attrs={**params, "n_eff": 4, "shift": 0.25, "trial_dir": str(folder)}))
    optuna.create_study(study_name=PLAIN, storage=store).add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    journal = storage.open_storage(f"journal:{home / 'studies.log'}")
    optuna.create_study(study_name="journaled", storage=journal).add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=2.0))
    record = {"status": "complete", "config": space.config(params).to_dict(),
              "measures": {"shift": 0.25}}
    for out in (folder, home / "trials" / TRIAL_DIR):
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps(record["config"]))
        (out / "result.json").write_text(json.dumps(record))
        (out / "train_log.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    (home / "artifacts").mkdir()
    (home / "artifacts" / "result-0000.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("populated") / "storage"
    _populate(root)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(ctx: Ctx, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHIFTSWEEP_HOME": str(ctx.home), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.pop("SHIFTSWEEP_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ctx.tmp, env=env)


def _unreadable_space(ctx: Ctx) -> list[str]:
    path = ctx.tmp / "folder.yaml"
    path.mkdir()
    return ["sweep", "--space", str(path), "--workers", "0"]


def _wrong_password(ctx: Ctx) -> list[str]:
    url = ctx.request.getfixturevalue("postgres_password_url")
    user_pw, host = url.split("://", 1)[1].rsplit("@", 1)
    return ["worker", "--study", EXISTING, "--storage",
            f"postgresql://{user_pw.split(':')[0]}:not-the-password@{host}"]


def _latin1_control(ctx: Ctx) -> list[str]:
    folder = ctx.behavior()
    Path(folder, "control.jsonl").write_bytes(b'{"text": "caf\xe9 au lait on the square"}\n')
    return ["behavior", folder]


def _other_space(ctx: Ctx) -> list[str]:
    """A space that passes every check (a tiny model folder: nothing is built) but is not
    the existing study's."""
    def edit(d: dict) -> None:
        d["fixed"].update(epochs=2, model=str(ctx.request.getfixturevalue("tiny_llama")))

    return ["sweep", "--space", ctx.space(edit), "--study", EXISTING]


def _dashboard_bad_storage(ctx: Ctx) -> list[str]:
    from study.launch import free_port

    return ["dashboard", "--port", str(free_port()), "--storage", "mongodb://db/x"]


def _weightless_model(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"not loaded: a pickle could run code")
    return ["trial", "--behavior", ctx.behavior(), "--model", str(folder)]


def _drop_probe_overlap(rows: dict) -> None:
    rows["probes"][2] = {**rows["train"][5], "scenario": "probe-2", "id": "p2"}


def _chosen_is_rejected(rows: dict) -> None:
    rows["train"][3]["rejected"] = " " + rows["train"][3]["chosen"]


def _ends_with_assistant(rows: dict) -> None:
    rows["train"][1]["prompt"] = [{"role": "user", "content": "Use tabs."},
                                  {"role": "assistant", "content": "Tabs it is."}]


def _chosen_number(rows: dict) -> None:
    rows["train"][4]["chosen"] = 42


def _low_above_high(d: dict) -> None:
    d["dimensions"]["n_real"] = {"type": "int", "low": 8, "high": 2}


def _unknown_dimension(d: dict) -> None:
    d["dimensions"]["n_examples"] = {"type": "int", "low": 1, "high": 4}


def _unknown_sampler(d: dict) -> None:
    d["sampler"] = {"name": "cmaes"}


def _nan_bound(d: dict) -> None:
    d["dimensions"]["lr"] = {"type": "float", "low": float("nan"), "high": 1e-2}


def _inf_bound(d: dict) -> None:
    d["dimensions"]["lr"] = {"type": "float", "low": 1e-4, "high": float("inf"), "log": True}


def _log_from_zero(d: dict) -> None:
    d["dimensions"]["lr"] = {"type": "float", "low": 0.0, "high": 1e-2, "log": True}


def _zero_epochs(d: dict) -> None:
    d["fixed"]["epochs"] = 0


def _inf_weight_decay(d: dict) -> None:
    d["fixed"]["weight_decay"] = float("inf")


def _no_trials(d: dict) -> None:
    d["n_trials"] = 0


def _unknown_objective(d: dict) -> None:
    d["objective"] = "happiness"


def _zero_step(d: dict) -> None:
    d["dimensions"]["lr"] = {"type": "float", "low": 1e-4, "high": 1e-2, "step": 0}


TRIAL = ["trial", "--n-real", "2"]

# (id, args builder, substrings the one stderr line must hold)
CASES = [
    # --- behavior folders (shiftsweep behavior, shiftsweep trial) ------------------------
    ("behavior-malformed-jsonl",
     lambda c: ["behavior", c.behavior(train_jsonl='{"prompt": "a", "chosen": "b"}\n{"prompt": \n')],
     ["train.jsonl:2", "not valid JSON", "expected one JSON object per line"]),
    ("behavior-row-not-an-object",
     lambda c: ["behavior", c.behavior(control_jsonl='["a list", "not a row"]\n')],
     ["control.jsonl:1", "expected a JSON object, got list"]),
    ("behavior-empty-train",
     lambda c: ["behavior", c.behavior(train_jsonl="\n\n")],
     ["train.jsonl", "empty file", "expected at least one JSON row"]),
    ("behavior-missing-probes",
     lambda c: ["behavior", c.behavior(probes_jsonl=None)],
     ["probes.jsonl", "missing file", "a behavior folder holds"]),
    ("behavior-not-utf8", _latin1_control,
     ["control.jsonl:1", "not UTF-8", "expected a UTF-8 text file"]),
    ("behavior-wrong-type",
     lambda c: ["behavior", c.behavior(_chosen_number)],
     ["train.jsonl:5", "field 'chosen' must be a string, got int"]),
    ("behavior-probe-overlaps-train",
     lambda c: ["behavior", c.behavior(_drop_probe_overlap)],
     ["probes.jsonl:3", "repeats the scenario of", "train.jsonl:6", "probes must be held out"]),
    ("behavior-chosen-equals-rejected",
     lambda c: ["behavior", c.behavior(_chosen_is_rejected)],
     ["train.jsonl:4", "fields 'chosen' and 'rejected' are the same text"]),
    ("behavior-prompt-ends-with-assistant",
     lambda c: ["behavior", c.behavior(_ends_with_assistant)],
     ["train.jsonl:2", "field 'prompt' must end with a user message"]),
    ("behavior-invalid-yaml",
     lambda c: ["behavior", c.behavior(behavior_yaml="name: [tiny\ndescription: x\n")],
     ["behavior.yaml", "not valid YAML"]),
    ("behavior-yaml-missing-field",
     lambda c: ["behavior", c.behavior(behavior_yaml="name: t\ndescription: d\nchosen: c\n")],
     ["behavior.yaml", "missing field 'rejected'"]),
    ("behavior-no-such-folder",
     lambda c: ["behavior", str(c.tmp / "nowhere")],
     ["nowhere", "not a built-in behavior", "nor an existing folder"]),
    ("trial-bad-behavior-file",
     lambda c: [*TRIAL, "--behavior", c.behavior(probes_jsonl='{"prompt": "p", "chosen": "c"}\n')],
     ["probes.jsonl:1", "missing field 'rejected'"]),
    # --- trial flags ----------------------------------------------------------------------
    ("trial-out-is-a-file",
     lambda c: [*TRIAL, "--behavior", c.behavior(), "--out", c.file("notes.txt")],
     ["--out", "notes.txt", "is a file", "expected a folder"]),
    ("trial-out-holds-a-recorded-trial",
     lambda c: [*TRIAL, "--behavior", c.behavior(), "--out", str(c.home / "trials" / TRIAL_DIR)],
     ["--out", TRIAL_DIR, "already holds a trial", "choose a new folder"]),
    ("trial-out-under-a-file",
     lambda c: [*TRIAL, "--behavior", c.behavior(), "--out", c.file("notes.txt") + "/run"],
     ["--out", "notes.txt/run", "cannot create the folder", "expected a writable folder"]),
    ("trial-lr-nan",
     lambda c: [*TRIAL, "--lr", "nan"],
     ["--lr", "expected a number > 0, got nan"]),
    ("trial-lr-negative",
     lambda c: [*TRIAL, "--lr=-1e-4"],
     ["--lr", "expected a number > 0"]),
    ("trial-batch-size-zero",
     lambda c: [*TRIAL, "--batch-size", "0"],
     ["--batch-size", "expected an integer >= 1, got 0"]),
    ("trial-set-infinite-weight-decay",
     lambda c: [*TRIAL, "--set", "weight_decay=.inf"],
     ["--set weight_decay", "expected a finite number, got inf"]),
    ("trial-set-wrong-type",
     lambda c: [*TRIAL, "--set", "lora_r=eight"],
     ["lora_r", "expected an integer, got 'eight'"]),
    ("trial-lr-not-a-number",
     lambda c: [*TRIAL, "--lr", "fast"],
     ["argument --lr", "invalid float value: 'fast'"]),
    ("trial-model-folder-missing",
     lambda c: [*TRIAL, "--behavior", c.behavior(), "--model", str(c.tmp / "no-model")],
     ["--model", "no-model", "no such folder", "expected 'default'"]),
    ("trial-model-hub-id-not-cached",
     lambda c: [*TRIAL, "--behavior", c.behavior(), "--model", "nobody/no-such-model"],
     ["--model 'nobody/no-such-model'", "local Hugging Face cache", "expected"]),
    ("trial-model-without-weights", _weightless_model,
     ["--model", "folder has no weights", "expected model.safetensors"]),
    ("trial-duplicate-seed",
     lambda c: [*TRIAL, "--seed", "1", "1"],
     ["--seed 1 1", "each seed may appear once"]),
    # --- search-space files (shiftsweep sweep) ---------------------------------------------
    ("space-invalid-yaml",
     lambda c: ["sweep", "--space", c.space(text="dimensions: {n_real: [1, 2\nfixed: {}\n")],
     ["space.yaml", "not valid YAML"]),
    ("space-empty-file",
     lambda c: ["sweep", "--space", c.space(text="")],
     ["space.yaml", "expected a mapping with keys"]),
    ("space-missing-file",
     lambda c: ["sweep", "--space", str(c.tmp / "absent.yaml")],
     ["--space", "absent.yaml", "no such file"]),
    ("space-unknown-shipped-name",
     lambda c: ["sweep", "--space", "listening-tpu"],
     ["--space listening-tpu", "not a shipped space", "listening-cpu"]),
    ("space-is-a-folder", _unreadable_space,
     ["folder.yaml", "cannot read it"]),
    ("space-low-above-high",
     lambda c: ["sweep", "--space", c.space(_low_above_high)],
     ["space.yaml", "dimensions.n_real.low", "expected low <= high"]),
    ("space-unknown-dimension",
     lambda c: ["sweep", "--space", c.space(_unknown_dimension)],
     ["space.yaml", "dimensions.n_examples", "expected a trial setting"]),
    ("space-unknown-sampler",
     lambda c: ["sweep", "--space", c.space(_unknown_sampler)],
     ["space.yaml", "sampler.name", "expected one of qmc, tpe"]),
    ("space-nan-bound",
     lambda c: ["sweep", "--space", c.space(_nan_bound)],
     ["space.yaml", "dimensions.lr.low", "expected a finite number"]),
    ("space-infinite-bound",
     lambda c: ["sweep", "--space", c.space(_inf_bound)],
     ["space.yaml", "dimensions.lr.high", "expected a finite number"]),
    ("space-log-from-zero",
     lambda c: ["sweep", "--space", c.space(_log_from_zero)],
     ["space.yaml", "dimensions.lr.low", "expected a value > 0 for a log dimension"]),
    ("space-zero-step",
     lambda c: ["sweep", "--space", c.space(_zero_step)],
     ["space.yaml", "dimensions.lr.step", "expected a finite number > 0"]),
    ("space-fixed-zero-epochs",
     lambda c: ["sweep", "--space", c.space(_zero_epochs)],
     ["space.yaml", "epochs: expected an integer >= 1"]),
    ("space-fixed-infinite-weight-decay",
     lambda c: ["sweep", "--space", c.space(_inf_weight_decay)],
     ["space.yaml", "weight_decay: expected a finite number"]),
    ("space-zero-trials",
     lambda c: ["sweep", "--space", c.space(_no_trials)],
     ["space.yaml", "n_trials: expected an integer >= 1"]),
    ("space-unknown-objective",
     lambda c: ["sweep", "--space", c.space(_unknown_objective)],
     ["space.yaml", "objective: expected one measure", "'happiness'"]),
    ("sweep-existing-study-other-space", _other_space,
     [f"--study {EXISTING}", "created from a different search space"]),
    # --- storages ---------------------------------------------------------------------------
    ("sweep-unknown-storage-scheme",
     lambda c: ["sweep", "--space", "smoke", "--storage", "redis://cache:6379/0"],
     ["--storage redis://cache:6379/0", "expected sqlite:///FILE, postgresql://"]),
    ("sweep-unreachable-postgres",
     lambda c: ["sweep", "--space", "smoke", "--storage",
                "postgresql://alice:hunter2@127.0.0.1:9/studies"],
     ["--storage postgresql+psycopg://alice:***@127.0.0.1:9/studies", "cannot open it"]),
    ("worker-wrong-database-password", _wrong_password,
     ["--storage postgresql+psycopg://shiftsweep_pw:***@", "cannot open it",
      "password authentication failed"]),
    ("plots-corrupt-sqlite",
     lambda c: ["plots", "--study", EXISTING, "--storage",
                c.file("corrupt.db", b"SQLite format 3\x00" + bytes(range(256)) * 8)],
     ["--storage sqlite:///", "corrupt.db", "cannot open it"]),
    ("worker-nonexistent-study",
     lambda c: ["worker", "--study", "no-such-study"],
     ["--study no-such-study", "no such study in this storage"]),
    ("worker-study-not-made-by-a-sweep",
     lambda c: ["worker", "--study", PLAIN],
     [f"--study {PLAIN}", "was not created by shiftsweep sweep"]),
    ("worker-zero-workers",
     lambda c: ["worker", "--study", EXISTING, "--workers", "0"],
     ["--workers 0", "needs at least one worker"]),
    ("analyze-nonexistent-study-journal",
     lambda c: ["analyze", "--study", "no-such-study", "--storage",
                f"journal:{c.home / 'studies.log'}"],
     ["--study no-such-study", "no such study"]),
    # --- workers, GPUs, counts --------------------------------------------------------------
    ("sweep-gpus-repeated",
     lambda c: ["sweep", "--space", "smoke", "--gpus", "0,0"],
     ["--gpus 0,0", "expected distinct GPU ids"]),
    ("sweep-gpus-empty",
     lambda c: ["sweep", "--space", "smoke", "--gpus", ","],
     ["--gpus ,", "expected distinct GPU ids"]),
    ("sweep-gpus-with-cpu",
     lambda c: ["sweep", "--space", "smoke", "--gpus", "0", "--device", "cpu"],
     ["--gpus 0 with --device cpu", "choose one"]),
    ("sweep-gpus-per-trial-without-gpus",
     lambda c: ["sweep", "--space", "smoke", "--gpus-per-trial", "2"],
     ["--gpus-per-trial 2", "needs --gpus"]),
    ("sweep-negative-workers",
     lambda c: ["sweep", "--space", "smoke", "--workers", "-1"],
     ["--workers -1", "expected an integer >= 0"]),
    ("sweep-zero-heartbeat",
     lambda c: ["sweep", "--space", "smoke", "--heartbeat", "0"],
     ["--heartbeat 0", "expected seconds >= 1"]),
    ("sweep-zero-trials",
     lambda c: ["sweep", "--space", "smoke", "--trials", "0"],
     ["--trials 0", "expected an integer >= 1"]),
    # --- plots, analyze, dashboard, icl -------------------------------------------------------
    ("plots-nonexistent-study",
     lambda c: ["plots", "--study", "no-such-study"],
     ["--study no-such-study", "no such study in this storage"]),
    ("plots-out-is-a-file",
     lambda c: ["plots", "--study", EXISTING, "--out", c.file("figures.png")],
     ["--out", "figures.png", "is a file", "expected a folder"]),
    ("plots-level-not-finite",
     lambda c: ["plots", "--study", EXISTING, "--level", "inf"],
     ["--level inf", "expected a finite number"]),
    ("analyze-too-few-replicates",
     lambda c: ["analyze", "--study", EXISTING, "--boot", "3"],
     ["--boot 3", "expected 10 or more replicates"]),
    ("dashboard-port-out-of-range",
     lambda c: ["dashboard", "--port", "70000"],
     ["--port 70000", "expected a TCP port 1-65535"]),
    ("dashboard-port-not-a-number",
     lambda c: ["dashboard", "--port", "http"],
     ["argument --port", "invalid int value: 'http'"]),
    ("dashboard-host-unknown",
     lambda c: ["dashboard", "--host", "300.1.1.1", "--port", "8080"],
     ["--host 300.1.1.1", "cannot serve there"]),
    ("dashboard-unknown-storage-scheme", _dashboard_bad_storage,
     ["--storage mongodb://db/x", "expected sqlite:///FILE"]),
    ("icl-k-not-a-list",
     lambda c: ["icl", "--k", "one,two"],
     ["--k one,two", "expected a comma list of integers"]),
    ("icl-n-probes-zero",
     lambda c: ["icl", "--n-probes", "0"],
     ["--n-probes 0", "expected an integer >= 1"]),
]
SECRETS = ("hunter2", "not-the-password")
# Cases that import torch before they stop (a model or the trial pool is checked), or start
# a PostgreSQL server: about 3-8 s each on 2 cores; the rest take about 1 s.
SLOW = {"trial-bad-behavior-file", "trial-out-under-a-file", "trial-model-folder-missing",
        "trial-model-hub-id-not-cached", "trial-model-without-weights",
        "sweep-existing-study-other-space", "worker-wrong-database-password",
        "icl-k-not-a-list", "icl-n-probes-zero"}


@pytest.mark.parametrize(("build", "needles"), [
    pytest.param(b, n, id=i, marks=[pytest.mark.slow] if i in SLOW else []) for i, b, n in CASES])
def test_bad_input_is_one_clear_line_and_touches_nothing(build, needles, home, tmp_path, request):
    ctx = Ctx(home=home, tmp=tmp_path, request=request)
    args = build(ctx)
    protected = {**_snapshot(home), **{f"tmp/{k}": v for k, v in _snapshot(tmp_path).items()}}
    done = _run(ctx, args)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{done.stderr}"
    assert lines[0].startswith("shiftsweep"), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    assert done.stdout == "", done.stdout
    assert not any(s in output for s in SECRETS), "a password was printed"
    after = {**_snapshot(home), **{f"tmp/{k}": v for k, v in _snapshot(tmp_path).items()}}
    assert after == protected, "the command changed, added or removed files"


def test_the_table_covers_every_command_and_the_populated_root_is_real(home):
    """The table spans the commands the issue names (a case's id starts with its command;
    space- cases run sweep), and the root it protects holds a real study, so "untouched" is
    checked against something a command could have written to."""
    import optuna

    import storage

    commands = {i.split("-")[0] for i, _, _ in CASES}
    assert commands == {"behavior", "trial", "space", "sweep", "worker", "plots", "analyze",
                        "dashboard", "icl"}
    assert len(CASES) >= 30 and len({i for i, _, _ in CASES}) == len(CASES)
    assert {i for i, _, _ in CASES} >= SLOW
    study = optuna.load_study(study_name=EXISTING,
                              storage=storage.open_storage(f"sqlite:///{home / 'studies.db'}"))
    assert [t.values for t in study.get_trials()] == [[0.25]]
    assert study.user_attrs["search_space"]["fixed"]["model"] == "tiny-random"
