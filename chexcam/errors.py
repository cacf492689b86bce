"""Exceptions for mistakes a user can fix; tools print them as one line and exit with status 2 (status 1 where
the environment refused: a file that cannot be read, or text that is not UTF-8)."""

#: exit status of a failure of the environment (a file that cannot be read, undecodable text, out of memory)
EXIT_ENVIRONMENT = 1


class ChexcamError(Exception):
    """A user-facing error: bad config, bad file, bad weights. Its message is one complete line."""

    exit_code = 2

    def __init__(self, *args, exit_code=None):
        super().__init__(*args)
        if exit_code is not None:  # 1: the environment refused (a file that cannot be read, text not UTF-8)
            self.exit_code = exit_code

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


def environment(exc: BaseException):
    """The exit status for a file that could not be read because of ``exc``: :data:`EXIT_ENVIRONMENT` for the
    system's refusals and undecodable text, ``None`` (the error's own, 2) for a malformed file."""
    return EXIT_ENVIRONMENT if isinstance(exc, (OSError, UnicodeError)) else None


def read_reason(exc: BaseException) -> str:
    """Why a file could not be read, in a few words: ``not UTF-8 text``, the system's reason, or the parser's."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
