"""Security: the dashboard stays on loopback unless told otherwise, database passwords appear
nowhere a sweep writes, and no file a user did not write is unpickled or evaluated."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

import storage
from study import cli
from study.launch import free_port

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("objectives", "study", "storage", "search_spaces")


# --- the dashboard ----------------------------------------------------------------------------
def test_the_dashboard_defaults_to_loopback_in_the_cli_and_the_makefile(tmp_path):
    assert cli._parser().parse_args(["dashboard"]).host == "127.0.0.1"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", makefile, re.M)

    def dry_run(*overrides: str) -> str:
        done = subprocess.run(["make", "-n", "-C", str(REPO), "dashboard", *overrides],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return next(line for line in done.stdout.splitlines() if "shiftsweep dashboard" in line)

    assert "--host 127.0.0.1 --port 8080" in dry_run()
    assert "--host 0.0.0.0 --port 9000" in dry_run("HOST=0.0.0.0", "PORT=9000")
    from study.sweep import dashboard_command

    cmd = dashboard_command("sqlite:///x.db", "127.0.0.1", 8080, tmp_path)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "0.0.0.0" not in cmd


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False),
    ("10.0.0.1", False), ("gpu-node-3", False),
])
def test_only_loopback_hosts_pass_without_a_warning(host, loopback):
    assert cli.is_loopback(host) is loopback
    warning = cli.exposure_warning(host, 8080)
    assert (warning is None) is loopback
    if warning:
        assert host in warning and "not on loopback" in warning and "127.0.0.1" in warning


def _dashboard_banner(*args: str) -> list[str]:
    """Start ``shiftsweep dashboard``, return its stderr up to the banner line, stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "dashboard", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            if "optuna-dashboard on http" in line:
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return lines


def test_the_dashboard_warns_once_when_bound_beyond_loopback():
    port = free_port()
    local = _dashboard_banner("--port", str(port))
    assert local == [f"shiftsweep: optuna-dashboard on http://127.0.0.1:{port} "
                     f"(storage {storage.default_url()})"]
    port = free_port()
    wide = _dashboard_banner("--host", "0.0.0.0", "--port", str(port))
    warnings = [line for line in wide if "warning" in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "not on loopback" in warnings[0]
    assert wide[-1].startswith(f"shiftsweep: optuna-dashboard on http://0.0.0.0:{port}")


# --- passwords --------------------------------------------------------------------------------
def test_a_sweep_worker_takes_its_storage_from_the_environment(monkeypatch, capsys):
    from study import sweep_worker
    from study.sweep import STORAGE_ENV

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        sweep_worker.main(["--study", "s", "--artifacts", "a"])
    assert exit_.value.code == 2 and f"${STORAGE_ENV}" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(sweep_worker, "run", lambda *a: seen.setdefault("args", a) and 0)
    monkeypatch.setenv(STORAGE_ENV, "postgresql://u:pw@h/db")
    sweep_worker.main(["--study", "s", "--artifacts", "a"])
    assert seen["args"][:2] == ("s", "postgresql://u:pw@h/db")


def test_provenance_records_the_command_line_without_passwords(monkeypatch):
    from study.provenance import provenance

    monkeypatch.setattr(sys, "argv", ["shiftsweep", "sweep", "--storage",
                                      "postgresql://ann:s3cret@db/x", "--storage=mysql://b:pw2@h/y"])
    argv = provenance()["argv"]
    assert argv == ["shiftsweep", "sweep", "--storage", "postgresql://ann:***@db/x",
                    "--storage=mysql://b:***@h/y"]


def _everything_recorded(study: optuna.Study) -> str:
    """Every attribute of the study and of its trials, the dashboard's note included."""
    system = study._storage.get_study_system_attrs(study._study_id)  # no public getter
    parts = [json.dumps(study.user_attrs, default=str), json.dumps(system, default=str)]
    for t in study.get_trials():
        parts += [json.dumps(t.user_attrs, default=str), json.dumps(t.system_attrs, default=str),
                  json.dumps(t.params, default=str)]
    return "\n".join(parts)


@pytest.mark.slow
def test_no_password_anywhere_after_a_postgres_sweep(tmp_path, postgres_password_url):
    from optuna_dashboard import get_note

    password = postgres_password_url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    space["fixed"].update(n_probes=4, n_train_scored=2)
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(space))
    done = subprocess.run([sys.executable, "-m", "study.cli", "sweep", "--space", str(path),
                           "--trials", "1", "--storage", postgres_password_url],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert password not in done.stdout + done.stderr
    assert "shiftsweep_pw:***@" in done.stderr, "the banner names the storage, redacted"

    home = Path(os.environ["SHIFTSWEEP_HOME"])
    files = [p for p in home.rglob("*") if p.is_file() and "models" not in p.parts]
    logs = [p for p in files if p.suffix == ".log" and "logs" in p.parts]
    assert logs and {"result.json", "config.json", "train_log.jsonl"} <= {p.name for p in files}
    for p in files + list(tmp_path.rglob("*.*")):
        if p.is_file():
            assert password.encode() not in p.read_bytes(), f"the password is in {p}"
    first = logs[0].read_text().splitlines()[0]
    assert "SHIFTSWEEP_STORAGE=postgresql+psycopg://shiftsweep_pw:***@" in first
    assert "--storage" not in first, "the URL is not on the worker's command line"

    study = optuna.load_study(study_name="secret", storage=storage.open_storage(postgres_password_url))
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE]
    recorded = _everything_recorded(study)
    assert password not in recorded
    assert "shiftsweep_pw:***@" in json.dumps(study.user_attrs["created"]["argv"])
    note = get_note(study)
    assert "n_real" in note and password not in note


# --- nothing unpickled or evaluated ---------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def unsafe_calls(source: str, name: str = "<source>") -> list[str]:
    """What in ``source`` could run code from a file: pickle-family imports, eval/exec,
    non-safe YAML loaders, torch.load without weights_only=True, np.load with pickles,
    trust_remote_code=True, and model loads that would accept pickled weights."""
    found = []

    def where(node: ast.AST, what: str) -> None:
        found.append(f"{name}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                if mod.split(".")[0] in UNSAFE_MODULES:
                    where(node, f"imports {mod}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        kwargs = {k.arg: k.value for k in node.keywords}

        def const(key: str, kwargs: dict = kwargs) -> object:
            value = kwargs.get(key)
            return value.value if isinstance(value, ast.Constant) else None

        if isinstance(func, ast.Name) and attr in ("eval", "exec", "compile", "__import__"):
            where(node, f"calls {attr}()")
        if owner == "yaml" and attr in ("load", "load_all", "unsafe_load", "full_load",
                                        "unsafe_load_all", "full_load_all"):
            where(node, f"calls yaml.{attr} (use yaml.safe_load)")
        if attr == "load" and owner == "torch" and const("weights_only") is not True:
            where(node, "calls torch.load without weights_only=True")
        if attr == "load" and owner in ("np", "numpy") and const("allow_pickle") is True:
            where(node, "calls np.load with allow_pickle=True")
        if attr in ("read_pickle", "loads") and owner in ("pd", "pandas", "pickle"):
            where(node, f"calls {owner}.{attr}")
        if const("trust_remote_code") is True:
            where(node, "passes trust_remote_code=True")
        if (attr == "from_pretrained" and "Model" in owner and "gguf_file" not in kwargs
                and const("use_safetensors") is not True):
            where(node, f"{owner}.from_pretrained without use_safetensors=True")
    return found


def test_the_scanner_catches_each_unsafe_pattern():
    bad = """
import pickle
from dill import loads
eval(text)
exec(code)
yaml.load(f, Loader=yaml.Loader)
yaml.full_load(f)
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
pd.read_pickle(path)
AutoTokenizer.from_pretrained(name, trust_remote_code=True)
AutoModelForCausalLM.from_pretrained(name)
"""
    lines = [int(hit.split(":")[1]) for hit in unsafe_calls(bad)]
    assert lines == list(range(2, 14)), "each unsafe line is found, once"
    good = """
yaml.safe_load(f)
torch.load(path, weights_only=True)
np.load(path)
model.eval()
AutoModelForCausalLM.from_pretrained(name, use_safetensors=True)
AutoModelForCausalLM.from_pretrained(folder, gguf_file="m.gguf")
AutoTokenizer.from_pretrained(name)
"""
    assert unsafe_calls(good) == []


def test_the_source_tree_loads_nothing_unsafely():
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 20
    found = [hit for p in files for hit in unsafe_calls(p.read_text(), str(p.relative_to(REPO)))]
    assert found == []


def test_a_model_folder_with_only_pickled_weights_is_refused(tmp_path):
    from objectives.errors import UserError
    from objectives.models import resolve_model

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(UserError, match=r"no weights .*pickled \.bin weights are not loaded"):
        resolve_model(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
