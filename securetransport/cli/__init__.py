"""The `securetransport` admin command: users, certificates, dev PKI, config check, policy.

Each subcommand lives in its own module with `register(subparsers)`, which adds
its parser and sets `func(args) -> int` as the handler. Handlers print problems as
short lines on stderr and return a non-zero exit code; they never let a traceback out.
A configuration that cannot be used is reported by `load_config_or_fail`: one line per
problem, no summary (SPEC 2).
"""

from __future__ import annotations

import argparse
import sys
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


def build_parser() -> argparse.ArgumentParser:
    from securetransport.cli import check, db, pki, policy, users

    parser = argparse.ArgumentParser(prog="securetransport", description=__doc__.splitlines()[0])
    add_config_option(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (check, users, pki, policy, db):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `securetransport` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CommandError as error:
        for line in error.lines:
            print(f"securetransport: {line}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
