"""The one error type for user mistakes: the CLI prints its message and exits 2, no traceback."""

from __future__ import annotations

from pathlib import Path


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
