"""Errors a user can fix: they reach the command line as one clear line, not a traceback."""


class UserError(Exception):
    """Something in the user's input (data, config, workdir) is wrong; the message says what."""


class DataError(UserError):
    """A data file is missing, malformed or out of range."""


class ConfigError(UserError):
    """A config value is unknown, out of range or inconsistent."""


class TrainingDiverged(UserError):
    """The loss or the gradients became NaN or infinite; the message says what to change."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run after it saved its state; exit code 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
