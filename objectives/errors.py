"""The error types of a trial, and the one place that says why a trial failed.

``UserError``: a person's mistake; the CLI prints its message and exits 2, no traceback.
``Diverged``: the training loss became non-finite; training stops at that step.
:func:`failure_reason` turns any exception into the reason a failed trial is recorded with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What allocators say when memory runs out: PyTorch's CPU allocator ("DefaultCPUAllocator:
# can't allocate memory"), CUDA / MPS / XPU ("... out of memory"), cuBLAS and cuDNN.
OOM_MESSAGES = ("can't allocate memory", "cannot allocate memory", "out of memory",
                "cublas_status_alloc_failed", "cudnn_status_alloc_failed")


class UserError(Exception):
    """Bad input from a person: the message names the file, field or flag and what was expected."""


def read_text(path: Path) -> str:
    """A user's file as UTF-8 text; unreadable or not text is one :class:`UserError`."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {err.start}); expected a UTF-8 "
                        f"text file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None


class Diverged(RuntimeError):
    """The training loss became non-finite at ``step``: the weights are lost, training stops.

    ``log`` holds the steps before it (their losses were finite)."""

    def __init__(self, step: int, loss: float, steps: int, log: list[dict[str, Any]]) -> None:
        super().__init__(f"non-finite training loss ({loss}) at step {step} of {steps}")
        self.step, self.loss, self.log = step, loss, list(log)


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation failure: ``MemoryError``, ``torch.OutOfMemoryError`` or an allocator's
    ``RuntimeError`` (the CPU allocator raises a plain one)."""
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        if isinstance(err, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in OOM_MESSAGES)


def failure_kind(err: BaseException) -> str:
    """``user``, ``diverged``, ``oom`` or ``error``: what a failed trial's record calls it."""
    if isinstance(err, UserError):
        return "user"
    if isinstance(err, Diverged):
        return "diverged"
    if is_out_of_memory(err):
        return "oom"
    return "error"


def failure_reason(err: BaseException) -> str:
    """The one-line reason a failed trial is recorded with: a user error's own message;
    ``diverged: ...`` and ``oom: ...`` for those two (what the chaos table looks for); else
    the exception's type and message."""
    kind = failure_kind(err)
    if kind == "user":
        return str(err)
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return text if kind == "error" else f"{kind}: {text}"
