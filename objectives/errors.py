"""The one error type for user mistakes: the CLI prints its message and exits 2, no traceback."""


class UserError(Exception):
    """Bad input from a person: the message names the file, field or flag and what was expected."""
