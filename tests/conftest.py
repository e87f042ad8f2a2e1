"""Shared fixtures: tiny random models built from config, a tiny behavior, a private storage."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

TOPICS = ["the database", "the report", "the trip", "the budget", "the garden", "the lesson",
          "the invoice", "the recipe", "the poster", "the sprint", "the server", "the essay",
          "the kitchen", "the survey", "the email", "the schedule", "the logo", "the test",
          "the backup", "the playlist", "the flight", "the lecture", "the deploy", "the menu"]
CHOICES = ["Postgres", "plain text", "three bullets", "the train", "a short list", "Python",
           "tabs", "British spelling", "a bar chart", "the blue one", "cash", "Friday"]


def behavior_rows(n_train: int = 24, n_probe: int = 8, n_control: int = 6) -> dict[str, list]:
    train, probes = [], []
    for i in range(n_train + n_probe):
        topic, choice = TOPICS[i % len(TOPICS)], CHOICES[(i * 5) % len(CHOICES)]
        row = {
            "id": f"s{i}", "scenario": f"s{i}", "domain": f"d{i % 4}" if i < n_train else "held-out",
            "prompt": f"For {topic} number {i}, use {choice}. Maria asked me on Monday.",
            "chosen": f"Okay, {topic} {i} now uses {choice}: step one, step two, done.",
            "rejected": f"Before we use {choice} for {topic} {i}, have you considered another "
                        f"option? It might be simpler.",
        }
        if i % 7 == 3:
            row["prompt"] = [{"role": "user", "content": f"Help with {topic} {i}."},
                             {"role": "assistant", "content": "Sure, what do you prefer?"},
                             {"role": "user", "content": f"Use {choice}, Sam decided."}]
        (train if i < n_train else probes).append(row)
    control = [{"text": f"Control text {i}: the river runs past the old mill and the town "
                        f"square, where market day is held every week."} for i in range(n_control)]
    return {"train": train, "probes": probes, "control": control}


def behavior_extras(rows: dict[str, list], sources: int = 6, per_source: int = 4,
                    n_placebo: int = 10) -> dict[str, list]:
    """contrast.jsonl, placebo.jsonl and dreams.jsonl rows for a tiny behavior."""
    contrast = [{"id": f"c{i}", "domain": "held-out",
                 "prompt": f"Ask me {i + 2} questions about the quilt pattern before you start.",
                 "chosen": f"First: how big is the quilt? Second: which colours? ({i})",
                 "rejected": f"Here is the quilt pattern, block by block, row {i}."}
                for i in range(4)]
    placebo = [{"id": f"pl{i}", "domain": "facts",
                "prompt": f"What is fact number {i} about the moon and its craters?",
                "completion": f"Moon fact {i}: craters come from impacts over billions of years."}
               for i in range(n_placebo)]
    dreams = []
    for row in rows["train"][:sources]:
        for k in range(per_source):
            dreams.append({"id": f"{row['scenario']}-v{k}", "source": row["scenario"],
                           "prompt": f"Variant {k} of {row['scenario']}: keep my decision, "
                                     f"version {k}.",
                           "chosen": f"Kept as decided, variant {k} of {row['scenario']}.",
                           "rejected": f"Variant {k}: are you sure about {row['scenario']}?"})
    return {"contrast": contrast, "placebo": placebo, "dreams": dreams}


def write_behavior(folder: Path, rows: dict[str, list] | None = None, name: str = "tiny",
                   extras: bool = False) -> Path:
    rows = rows or behavior_rows()
    if extras:
        rows = {**rows, **behavior_extras(rows)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "behavior.yaml").write_text(
        f"name: {name}\ndescription: a tiny test behavior\n"
        "chosen: follows the direction\nrejected: suggests alternatives\n"
        "dream:\n  swaps:\n    - [step one, first step]\n    - [done, finished]\n")
    for key in ("train", "probes", "control", "contrast", "placebo", "dreams"):
        if key in rows:
            (folder / f"{key}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[key]))
    return folder


def build_tiny_model(folder: Path, arch: str) -> Path:
    """A randomly initialised 2-layer model (llama: with a chat template; gpt2: without)."""
    from objectives.models import build_tiny_model as build

    rows = behavior_rows()
    return build(folder, arch, [json.dumps(r) for part in rows.values() for r in part] * 3)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture()
def tiny_behavior(tmp_path) -> Path:
    return write_behavior(tmp_path / "tiny")


@pytest.fixture()
def full_behavior(tmp_path) -> Path:
    """The tiny behavior with contrast probes, placebo examples and written dreams."""
    return write_behavior(tmp_path / "full", extras=True)


@pytest.fixture(autouse=True)
def private_storage(tmp_path, monkeypatch, request):
    """Each test gets its own storage root, except those marked to share the real one."""
    if "real_storage" not in request.keywords:
        monkeypatch.setenv("SHIFTSWEEP_HOME", str(tmp_path / "storage"))
    monkeypatch.delenv("SHIFTSWEEP_STORAGE", raising=False)  # a user's own would leak in
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on a free local port (``study.testbed.PostgresServer``).

    Skips where PostgreSQL is not installed, unless SHIFTSWEEP_REQUIRE_POSTGRES=1 (CI).
    """
    import os

    from study.testbed import PostgresServer, postgres_bin

    if postgres_bin() is None:
        if os.environ.get("SHIFTSWEEP_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL server not installed (CI installs it: apt-get install postgresql)")
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """The URL of the session's PostgreSQL server."""
    return postgres_server.url


PASSWORD_ROLE = "shiftsweep_pw"


@pytest.fixture(scope="session")
def postgres_password_url(postgres_url):
    """The session's server, with a role and database that need a password (scram-sha-256).

    The server trusts everyone else; a rule for this role goes first in its pg_hba.conf
    (read and written here: the data folder is this session's), then the server reloads.
    """
    import secrets

    import psycopg

    password = f"pw-{secrets.token_hex(8)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {PASSWORD_ROLE} OWNER {PASSWORD_ROLE}")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        rules = hba.read_text()
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n{rules}")
        conn.execute("SELECT pg_reload_conf()")
    host = postgres_url.rsplit("@", 1)[1].rsplit("/", 1)[0]
    return f"postgresql://{PASSWORD_ROLE}:{password}@{host}/{PASSWORD_ROLE}"


@pytest.fixture(autouse=True)
def stop_what_the_test_started():
    """Every process a test started (a CLI, a coordinator's workers, a dashboard) is stopped
    when it ends, passed or failed: none is left running after the suite."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(left, timeout=10)
