"""The trial's science: behaviors, dream variations, the fine-tune and the shift score.

Knows nothing of Optuna. One entry point: ``Session.run(TrialConfig) -> result``.

The names below are imported on first use (PEP 562): ``objectives.config`` and
``objectives.errors`` then load without torch and datasets, so a command that stops at a
bad flag answers in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Behavior": "objectives.behavior", "builtin_behaviors": "objectives.behavior",
            "load_behavior": "objectives.behavior", "TrialConfig": "objectives.config",
            "UserError": "objectives.errors", "Session": "objectives.trial",
            "run_trial": "objectives.trial"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'objectives' has no attribute {name!r}")
