"""Where shiftsweep keeps what it makes: converted models, caches and trial folders.

The root is this package's folder (``storage/`` in a checkout) unless ``SHIFTSWEEP_HOME``
points elsewhere; everything under it except the code is ignored by git.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["artifacts_dir", "cache_dir", "default_url", "home", "models_dir", "open_storage", "redact",
           "trials_dir"]

STORAGE_ENV = "SHIFTSWEEP_STORAGE"  # the storage URL when --storage is not given
HEARTBEAT_S = 10  # a running trial writes a heartbeat this often ...
GRACE_FACTOR = 3  # ... and is declared stale (killed) after this many missed beats


def home() -> Path:
    """The storage root: ``$SHIFTSWEEP_HOME`` or this package's folder."""
    env = os.environ.get("SHIFTSWEEP_HOME")
    root = Path(env).expanduser() if env else Path(__file__).resolve().parent
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Converted models (the default SmolLM2, de-quantized once from its GGUF file)."""
    return _sub("models")


def cache_dir() -> Path:
    """Derived data that is safe to delete: base-model scores, dream variations."""
    return _sub("cache")


def trials_dir() -> Path:
    """Trial folders: ``shiftsweep trial`` runs and, under ``<study>/``, sweep trials."""
    return _sub("trials")


def artifacts_dir() -> Path:
    """Optuna artifacts (each trial's result and training log) for the dashboard."""
    return _sub("artifacts")


def default_url() -> str:
    """The embedded default: one SQLite file under the storage root."""
    return f"sqlite:///{home() / 'studies.db'}"


def normalize_url(url: str | None) -> str:
    """A storage URL in the form Optuna takes; plain paths are journal files or SQLite files.

    No URL: ``$SHIFTSWEEP_STORAGE`` if set (so a password need not be on a command line, which
    ``ps`` shows every user), else :func:`default_url`.

    ``postgresql://`` gets the psycopg 3 driver that shiftsweep installs (SQLAlchemy would
    otherwise look for psycopg2); ``mysql://`` needs ``pip install pymysql``.
    """
    from objectives.errors import UserError

    if not url:
        url = os.environ.get(STORAGE_ENV)
    if not url:
        return default_url()
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("mysql://"):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    if url.startswith(("sqlite:///", "postgresql+", "mysql+", "journal:")):
        return url
    if "://" in url:
        raise UserError(f"--storage {url}: expected sqlite:///FILE, postgresql://..., "
                        f"mysql://..., journal:FILE or a file path")
    path = Path(url).expanduser().resolve()
    if path.suffix in (".log", ".journal", ".jsonl"):
        return f"journal:{path}"
    return f"sqlite:///{path}"


def open_storage(url: str | None = None, heartbeat_s: int = HEARTBEAT_S) -> Any:
    """The one function from a URL to an Optuna storage.

    - ``None``: SQLite under ``storage/`` (:func:`default_url`);
    - ``sqlite:///``, ``postgresql://``, ``mysql://``: an RDBStorage with a heartbeat, so a
      killed trial goes stale after ``GRACE_FACTOR`` missed beats and is queued again
      (``RetryHeartbeatStaleTrialCallback``) when the next trial starts;
    - ``journal:FILE`` or a ``*.log`` path: a JournalStorage file with the same heartbeat,
      kept in files beside the journal (:func:`heartbeat_journal_storage`; Optuna has none for
      journals, and without one a killed trial stayed RUNNING for ever).
    """
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from objectives.errors import UserError

    url = normalize_url(url)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return _beat_through_outages(heartbeat_journal_storage(
            JournalFileBackend(str(path)), path, heartbeat_s, heartbeat_s * GRACE_FACTOR,
            RetryHeartbeatStaleTrialCallback(max_retry=2)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several local workers share the file: wait for its lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    def connect() -> Any:
        return _stale_without_a_beat(RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
            grace_period=heartbeat_s * GRACE_FACTOR,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2)),
            heartbeat_s * GRACE_FACTOR)

    try:
        try:
            return _beat_through_outages(connect())
        except Exception as err:
            # Two processes creating the same new database at once: the one that lost the race
            # to write its schema version finds it written; the schema is there now.
            if "UNIQUE constraint" not in str(err) and "duplicate key" not in str(err):
                raise
            time.sleep(1.0)
            return _beat_through_outages(connect())
    except ModuleNotFoundError as err:
        raise UserError(f"--storage {redact(url)}: its database driver is not installed "
                        f"({err.name}); for MySQL run `pip install pymysql`") from None
    except Exception as err:  # unreachable server, bad credentials, bad path
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--storage {redact(url)}: cannot open it ({first})") from None


def is_storage_error(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is the storage being unreachable: a
    database server restarting, a dropped connection. Optuna wraps these in
    StorageInternalError, and sometimes fails on its own after one (so the chain is read)."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        kind = type(cur)
        names = {f"{c.__module__}.{c.__name__}" for c in kind.__mro__}
        if names & {"optuna.exceptions.StorageInternalError", "sqlalchemy.exc.OperationalError",
                    "sqlalchemy.exc.InterfaceError", "sqlalchemy.exc.DisconnectionError",
                    "psycopg.OperationalError", "builtins.ConnectionError"}:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _beat_through_outages(store: Any) -> Any:
    """A heartbeat that survives a storage outage: Optuna's heartbeat thread dies at the first
    failed write, and the trial, alive, would then go stale and be run again by another worker.
    A failed beat is skipped; the next one, once the server is back, keeps the trial alive."""
    beat = store.record_heartbeat

    def record_heartbeat(trial_id: int) -> None:
        try:
            beat(trial_id)
        except Exception as err:
            if not is_storage_error(err) and not isinstance(err, OSError):
                raise

    store.record_heartbeat = record_heartbeat
    return store


def _stale_without_a_beat(store: Any, grace_s: float) -> Any:
    """Also count as stale a RUNNING trial that never wrote a heartbeat, once it started more
    than ``grace_s`` ago. Optuna's RDB storage skips such trials, so a worker killed between
    taking a trial and its first beat left it RUNNING for good (and counted toward the target).
    ``datetime_start`` is the worker's clock: the workers' clocks are assumed in step."""
    import datetime

    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    with_beats = store._get_stale_trial_ids

    def _get_stale_trial_ids(study_id: int) -> list[int]:
        stale = with_beats(study_id)
        now = datetime.datetime.now()
        old = [t._trial_id for t in store.get_all_trials(study_id, deepcopy=False,
                                                          states=(TrialState.RUNNING,))
               if t._trial_id not in stale and t.datetime_start is not None
               and (now - t.datetime_start).total_seconds() > grace_s]
        if old:
            with _create_scoped_session(store.scoped_session) as session:
                beating = {b.trial_id for b in session.query(models.TrialHeartbeatModel)
                           .filter(models.TrialHeartbeatModel.trial_id.in_(old)).all()}
            stale += [i for i in old if i not in beating]
        return stale

    store._get_stale_trial_ids = _get_stale_trial_ids
    return store


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, rest = tail.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{head}://{user}:***@{rest}" if ":" in cred else url
    return url


@functools.cache
def _journal_storage_class() -> type:
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat

    class _HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
        """A JournalStorage with Optuna's heartbeat, so a killed trial is failed and retried.

        Optuna's heartbeat lives in RDB tables; a journal has none. Here the worker running a
        trial touches ``<journal>.heartbeats/<trial id>`` every ``heartbeat_s`` seconds (Optuna's
        heartbeat thread calls :meth:`record_heartbeat`), beside the journal and so on the file
        system every worker of the study already shares. A RUNNING trial whose file is older
        than ``grace_s`` (or that has none that long after it started) is stale: Optuna's
        ``fail_stale_trials`` fails it and the callback queues it again, as with RDB storages.
        """

        def __init__(self, backend: Any, path: Path, heartbeat_s: int, grace_s: int,
                     callback: Any) -> None:
            super().__init__(backend)
            self._beats = Path(f"{path}.heartbeats")
            self._interval = heartbeat_s
            self._grace = grace_s
            self._callback = callback

        def record_heartbeat(self, trial_id: int) -> None:
            self._beats.mkdir(parents=True, exist_ok=True)
            (self._beats / str(trial_id)).touch()

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            from optuna.trial import TrialState

            now = time.time()
            stale = []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                try:
                    last = (self._beats / str(t._trial_id)).stat().st_mtime
                except FileNotFoundError:  # no beat yet: count from the trial's start
                    last = t.datetime_start.timestamp() if t.datetime_start else now
                if now - last > self._grace:
                    stale.append(t._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._interval

        def get_heartbeat_stale_trial_callback(self) -> Any:
            return self._callback

    return _HeartbeatJournalStorage


def heartbeat_journal_storage(backend: Any, path: Path, heartbeat_s: int, grace_s: int,
                            callback: Any) -> Any:
    """A journal storage with a heartbeat (see ``_journal_storage_class``); optuna is imported
    lazily, as everywhere in this module."""
    return _journal_storage_class()(backend, path, heartbeat_s, grace_s, callback)
