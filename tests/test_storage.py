"""storage/: the one function from a URL to an Optuna storage."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled

import storage
from objectives.errors import UserError


def test_the_default_is_sqlite_under_storage_with_a_heartbeat(tmp_path):
    assert storage.default_url() == f"sqlite:///{tmp_path / 'storage' / 'studies.db'}"
    store = storage.open_storage(None, heartbeat_s=7)
    assert isinstance(store, RDBStorage) and is_heartbeat_enabled(store)
    assert store.get_heartbeat_interval() == 7
    assert (tmp_path / "storage" / "studies.db").exists()


@pytest.mark.parametrize("given, expected", [
    ("postgresql://u:p@db/x", "postgresql+psycopg://u:p@db/x"),
    ("postgres://u@db/x", "postgresql+psycopg://u@db/x"),
    ("mysql://u@db/x", "mysql+pymysql://u@db/x"),
    ("sqlite:///a/b.db", "sqlite:///a/b.db"),
    ("journal:/a/b.log", "journal:/a/b.log"),
])
def test_urls_are_normalized(given, expected):
    assert storage.normalize_url(given) == expected


def test_plain_paths_pick_sqlite_or_a_journal(tmp_path):
    assert storage.normalize_url(str(tmp_path / "s.db")) == f"sqlite:///{tmp_path / 's.db'}"
    assert storage.normalize_url(str(tmp_path / "s.log")) == f"journal:{tmp_path / 's.log'}"


def test_a_journal_file_keeps_a_study(tmp_path):
    url = f"journal:{tmp_path / 'j' / 'studies.log'}"
    store = storage.open_storage(url)
    assert isinstance(store, JournalStorage)
    study = optuna.create_study(study_name="j", storage=store)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="j", storage=storage.open_storage(url))
    assert len(again.get_trials()) == 2


def test_bad_storage_urls_are_one_clear_error():
    with pytest.raises(UserError, match="--storage redis://h: expected sqlite"):
        storage.open_storage("redis://h")
    with pytest.raises(UserError, match=r"--storage postgresql\+psycopg://u:\*\*\*@127.0.0.1:9/x: "
                                        r"cannot open it"):
        storage.open_storage("postgresql://u:secret@127.0.0.1:9/x")


def test_the_storage_url_can_come_from_the_environment(tmp_path, monkeypatch):
    """--storage left out: $SHIFTSWEEP_STORAGE, so a password need not be on a command line."""
    import storage

    assert storage.normalize_url(None) == storage.default_url()
    monkeypatch.setenv(storage.STORAGE_ENV, "postgresql://u:pw@host/db")
    assert storage.normalize_url(None) == "postgresql+psycopg://u:pw@host/db"
    assert storage.normalize_url(str(tmp_path / "s.db")) == f"sqlite:///{tmp_path / 's.db'}"
