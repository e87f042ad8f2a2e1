"""What shiftsweep writes: JSON without NaN, written atomically, and its console lines."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities to None (an undefined measure, e.g. flip_rate when no
    probe starts at margin <= 0), numpy scalars and arrays to Python, containers recursed."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy scalars and arrays
        return plain(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one,
    never half of one (several processes share caches and trial folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    text = json.dumps(plain(data), indent=indent, default=str, allow_nan=False)
    tmp.write_text(text + ("\n" if indent is not None else ""))
    os.replace(tmp, path)


def say(message: str, worker: bool = False) -> None:
    """A line on stderr. A worker's lines start ``[shiftsweep]`` (the coordinator picks them
    out of worker logs); the coordinator's and the CLI's start ``shiftsweep:``."""
    prefix = "[shiftsweep] " if worker else "shiftsweep: "
    print(prefix + message, file=sys.stderr, flush=True)
