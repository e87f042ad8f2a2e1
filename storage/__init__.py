"""Where shiftsweep keeps what it makes: converted models, caches and trial folders.

The root is this package's folder (``storage/`` in a checkout) unless ``SHIFTSWEEP_HOME``
points elsewhere; everything under it except the code is ignored by git.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "home", "models_dir", "trials_dir"]


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
    """Trial folders written by ``shiftsweep trial`` when no ``--out`` is given."""
    return _sub("trials")
