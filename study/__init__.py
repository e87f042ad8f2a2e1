"""Orchestration: the CLI, workers and launches. The only package that builds a launch command."""

import warnings

# Optuna marks heartbeats, the retry callback and QMC "experimental", and transformers warns
# about its own renames: neither is something a researcher running a sweep can act on.
warnings.filterwarnings("ignore", message=r".*(is experimental|experimental feature)")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
