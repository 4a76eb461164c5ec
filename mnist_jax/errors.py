"""Errors a user can fix: they reach the command line as one clear line, not a traceback."""


class UserError(Exception):
    """Something in the user's input (data, config, workdir) is wrong; the message says what."""


class DataError(UserError):
    """A data file is missing, malformed or out of range."""


class ConfigError(UserError):
    """A config value is unknown, out of range or inconsistent."""
