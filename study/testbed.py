"""Real parts for tests and ``make chaos``: a throwaway PostgreSQL server, small search spaces.

Both the test suite (``tests/conftest.py``) and :mod:`study.chaos` import these, so a sweep
under fault injection runs on the same server set-up and the same tiny model as the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``), or None."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))  # Debian's server
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class PostgresServer:
    """A real PostgreSQL server on a free local port, with trust authentication.

    Its folder is not under pytest's tmp root: that is private to this user, and as root the
    server runs as the package's ``postgres`` user (``initdb`` refuses root).
    """

    def __init__(self) -> None:
        from study.launch import free_port

        found = postgres_bin()
        if found is None:
            raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin: Path = found
        self.root = Path(tempfile.mkdtemp(prefix="shiftsweep-pg-"))
        self.data = self.root / "data"
        self.data.mkdir()
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.data, "postgres")
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._pg([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])

    def _pg(self, cmd: list[str]) -> None:
        done = subprocess.run([*self.run_as, *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")

    def start(self) -> PostgresServer:
        self._pg([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                  str(self.root / "server.log"), "-o",
                  f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start"])
        return self

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a server restart."""
        self._pg([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop"])

    def close(self) -> None:
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                        "fast", "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def tiny_space(path: Path, n_trials: int, dimensions: dict[str, Any] | None = None,
               **fixed: Any) -> Path:
    """A search space on the built-in 2-layer random model (``model: tiny-random``).

    Narrow dimensions (n_real 4-6, m 2, batch 2, 12 epochs: 48-72 steps) so every trial takes about as
    long: a fault aimed at the middle of a trial lands there. ``fixed`` overrides the settings.
    """
    fixed = {"behavior": "listening", "model": "tiny-random", "dream_strategy": "template",
             "dream_multiplier": 2, "batch_size": 2, "epochs": 12, "seed": 0, "finetune": "lora",
             "n_probes": 8, "n_contrast": 4, "n_control": 4, "n_train_scored": 4, **fixed}
    for name in dimensions or ():  # a dimension is not also a fixed setting
        fixed.pop(name, None)
    data = {
        "description": f"{path.stem}: a tiny random model under fault injection (numbers mean nothing)",
        "dimensions": dimensions or {
            "n_real": {"type": "int", "low": 4, "high": 6},
            "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        },
        "fixed": fixed,
        "sampler": {"name": "qmc", "seed": 0},
        "n_trials": n_trials,
        "objective": "shift",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
