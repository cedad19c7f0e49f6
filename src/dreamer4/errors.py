"""Errors a user can act on: the CLI prints them as one line naming the file and the problem."""


class StageError(ValueError):
    """Base of every error caused by input (params, raw files, data that fails validation)."""
