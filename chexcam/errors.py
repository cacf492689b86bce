"""Exceptions for mistakes a user can fix; tools print them as one line and exit with status 2."""


class ChexcamError(Exception):
    """A user-facing error: bad config, bad file, bad weights. Its message is one complete line."""

    exit_code = 2

    def __str__(self) -> str:
        # one line even when it quotes hostile input (a file name or an override with a line break in it)
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class ConfigError(ChexcamError):
    """Unknown key, wrong type or malformed override in a config."""


class BadImageError(ChexcamError):
    """An image file that is missing, empty, truncated or cannot be decoded."""


class WeightsError(ChexcamError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class DataError(ChexcamError):
    """A dataset that cannot be read: missing folders or CSVs, unknown labels, empty splits."""
