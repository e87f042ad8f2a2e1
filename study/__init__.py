"""Orchestration: the CLI, workers and launches. The only package that builds a launch command."""
