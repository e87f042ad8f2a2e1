"""Faults injected on purpose, for the tests and ``make chaos`` (off unless asked for).

``SHIFTSWEEP_INJECT_FAULT=POINT@RANK[,ONCE_FILE]`` makes process RANK raise at POINT (see
:data:`POINTS`). With ``ONCE_FILE`` it fires once: the file is created when it fires and the
fault is skipped while the file exists, so the next trial runs normally.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "SHIFTSWEEP_INJECT_FAULT"
POINTS = ("data", "train_step", "score")  # before training, inside a step, while scoring


class InjectedFault(RuntimeError):
    """The failure asked for by SHIFTSWEEP_INJECT_FAULT."""


def inject(point: str, rank: int) -> None:
    """Raise :class:`InjectedFault` if this point on this process was asked to fail."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, once = spec.partition(",")
    if where != f"{point}@{rank}":
        return
    if once:
        marker = Path(once)
        if marker.exists():
            return
        marker.touch()
    raise InjectedFault(f"fault injected at {point} on process {rank} ({ENV})")
