"""The one command line shared by every tool: ``-c CONFIG [-o KEY=VALUE ...]``.

User mistakes (``ChexcamError``) become one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Callable, Optional, Sequence

from .config import load_config
from .errors import ChexcamError
from .utils import setup_logging


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    try:
        cfg = load_config(args.config, args.override)
        setup_logging(logging.WARNING if args.quiet else logging.INFO)
        code = main(cfg, args)
        return int(code or 0)
    except ChexcamError as exc:
        # the tool's own one-line verdict on stderr, written before any logging may be set up
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
