"""The trial's science: behaviors, dream variations, the fine-tune and the shift score.

Knows nothing of Optuna. One entry point: ``Session.run(TrialConfig) -> result``.
"""

from objectives.behavior import Behavior, builtin_behaviors, load_behavior
from objectives.config import TrialConfig
from objectives.errors import UserError
from objectives.trial import Session, run_trial

__all__ = ["Behavior", "Session", "TrialConfig", "UserError", "builtin_behaviors",
           "load_behavior", "run_trial"]
