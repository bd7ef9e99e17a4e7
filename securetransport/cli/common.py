"""What every subcommand of the admin command shares: the `--config` option, the one-line
errors, loading the configuration."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from securetransport.config import Config, ConfigError, load_config

DEFAULT_CONFIG = Path("etc/securetransport.toml")


class CommandError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 1 (or `code`).

    `more`: further problems, one line each after the first.
    """

    def __init__(self, message: str, code: int = 1, more: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.lines = (message, *more)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` (also `-c`), shared by every subcommand."""
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )


def config_path(args: argparse.Namespace) -> Path:
    """The `--config` given anywhere on the command line, or the default."""
    return getattr(args, "config", DEFAULT_CONFIG)


def load_config_or_fail(path: Path) -> Config:
    """The configuration at `path`, or CommandError with one line per problem."""
    try:
        return load_config(path)
    except ConfigError as error:
        lines = [
            problem if problem.startswith(str(path)) else f"{path}: {problem}"
            for problem in error.problems
        ] or [f"{path}: not a valid configuration"]
        raise CommandError(lines[0], more=lines[1:]) from None
    except OSError as error:
        raise CommandError(f"{path}: cannot read: {error.strerror or error}") from None
