"""Exceptions for mistakes a user can fix. The CLI prints them as one line and exits with 2."""


class LmforgeError(Exception):
    """A user-facing error: the message names the bad value and how to fix it."""

    exit_code = 2


class ConfigError(LmforgeError):
    """The configuration (file or --set override) is invalid."""


class InputDataError(LmforgeError):
    """Input data is missing, empty or unreadable."""


class StageError(LmforgeError):
    """A stage cannot run because what it needs from an earlier stage is missing."""
