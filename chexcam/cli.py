"""The one command line shared by every tool: ``-c CONFIG [-o KEY=VALUE ...]``.

Every failure a user or the machine can cause ends as one line ``error: ...`` on stderr, never a traceback:
user mistakes (``ChexcamError``, a bad command line) exit with status 2; the operating system's refusals
(permission denied, disk full, a file where a folder is expected: the ``OSError`` family), undecodable text
and running out of memory with status 1. SIGTERM is handled like Ctrl-C (the same clean-up; files written
atomically stay consistent) and exits with 143, without Paddle's C++ stack dump; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import signal
import sys
import threading
import warnings
from typing import Callable, Optional, Sequence

from .config import load_config
from .errors import EXIT_ENVIRONMENT, ChexcamError
from .utils import setup_logging

EXIT_SIGTERM = 128 + signal.SIGTERM
#: seconds after which a SIGTERM is raised again while the tool still runs (its clean-up takes less)
SIGTERM_REPEAT_S = 2.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so the same clean-up runs."""


class ToolParser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` (exit status 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse ``type`` for counts and sizes: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type`` for limits such as MB: a finite number > 0 (not ``nan`` or ``inf``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = ToolParser(
        description=description,
        epilog="Example: -c configs/malaria.yaml -o train.epochs=2 -o output_dir=output/try",
    )
    parser.add_argument("-c", "--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. -o train.epochs=2 (repeatable; values parsed as YAML)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def run_tool(
    main: Callable[..., Optional[int]],
    description: str,
    argv: Optional[Sequence[str]] = None,
    parser: Optional[argparse.ArgumentParser] = None,
) -> int:
    """Parse the CLI, load the config, set up logging, call ``main(cfg, args)``; return an exit code."""
    warnings.filterwarnings("ignore", message="No ccache found")
    parser = parser or build_parser(description)
    args = parser.parse_args(argv)
    previous = _UNSET
    term: dict = {}  # this call's SIGTERM state: received, and the timer that repeats it
    unraisable = sys.unraisablehook

    def quiet_after_sigterm(info):
        # once terminated, a library's clean-up that the signal interrupts (a __del__, an at-fork hook) is not
        # news: the one line below says what happened. The repeated SIGTERM can land inside this very hook; what
        # it raises here is swallowed too, or Python would print "Exception ignored in sys.unraisablehook"
        try:
            if not term.get("received"):
                unraisable(info)
        except BaseException:  # noqa: BLE001  (a Terminated raised by the signal inside the hook)
            if not term.get("received"):
                raise

    sys.unraisablehook = quiet_after_sigterm
    try:
        cfg = load_config(args.config, args.override)
        setup_logging(logging.WARNING if args.quiet else logging.INFO)
        previous = _handle_sigterm(term)
        code = main(cfg, args)
        if term.get("received"):  # swallowed on the way (a bare except in a library): still a termination
            raise Terminated()
        return int(code or 0)
    except SystemError as exc:
        # paddle's DataLoader reports its workers killed by the same SIGTERM as a SystemError
        if not term.get("received"):
            raise
        del exc
        return _fail("terminated by SIGTERM; files already written are complete", EXIT_SIGTERM)
    except ChexcamError as exc:
        # the tool's own one-line verdict on stderr, written before any logging may be set up
        return _fail(str(exc), exc.exit_code)
    except OSError as exc:
        return _fail(describe_os_error(exc), EXIT_ENVIRONMENT)
    except UnicodeError as exc:
        return _fail(f"cannot read text: {exc.reason if hasattr(exc, 'reason') else exc} (not UTF-8)",
                     EXIT_ENVIRONMENT)
    except MemoryError:
        return _fail("out of memory; lower a batch size or data.max_pixels", EXIT_ENVIRONMENT)
    except Terminated:
        return _fail("terminated by SIGTERM; files already written are complete", EXIT_SIGTERM)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        timer = term.get("timer")
        if timer is not None:
            timer.cancel()
        if not term.get("received"):  # else the hook stays for the objects collected at exit
            sys.unraisablehook = unraisable
        if previous is not _UNSET:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _fail(message: str, code: int) -> int:
    """Write ``error: message`` as exactly one line (a newline in a hostile file name is escaped)."""
    sys.stderr.write("error: " + message.replace("\r", "\\r").replace("\n", "\\n") + "\n")
    sys.stderr.flush()
    return code


def describe_os_error(exc: OSError) -> str:
    """One line naming what the operating system refused and the path it refused."""
    path = exc.filename if exc.filename is not None else None
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    if path is None:
        return f"{exc.strerror or exc}".rstrip(".")
    if isinstance(exc, FileExistsError):
        return f"cannot create folder {path}: a file of that name is in the way"
    if isinstance(exc, NotADirectoryError):
        return f"cannot use {path}: part of the path is a file, not a folder"
    if isinstance(exc, IsADirectoryError):
        return f"cannot write or read {path}: it is a folder, not a file"
    if isinstance(exc, PermissionError):
        return f"permission denied: {path}"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}"
    return f"{(exc.strerror or str(exc)).rstrip('.')}: {path}"


_UNSET = object()


def _handle_sigterm(term: dict):
    """Make SIGTERM raise :class:`Terminated`; returns the handler it replaced (``_UNSET`` off the main thread).

    Paddle installs glog's failure handler for SIGTERM when imported (a C++ stack dump, then abort), so
    paddle is imported first and Python's handler replaces it. ``term["received"]`` records the signal, and
    it is raised again every :data:`SIGTERM_REPEAT_S` seconds until the tool ends: a library's bare ``except:``
    (paddle's DataLoader has some) may swallow the first :class:`Terminated`, and a run must not go on
    training after it.
    """
    if threading.current_thread() is not threading.main_thread():
        return _UNSET
    try:
        import paddle  # noqa: F401  (its import installs the handler this one replaces)
    except ImportError:  # pragma: no cover - every tool needs paddle, but the CLI itself does not
        pass

    def on_sigterm(signum, frame):
        term["received"] = True
        timer = threading.Timer(SIGTERM_REPEAT_S, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        term["timer"] = timer
        timer.start()
        raise Terminated()

    return signal.signal(signal.SIGTERM, on_sigterm)
