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

from securetransport.cli import check, db, pki, policy, users
from securetransport.cli.common import (
    DEFAULT_CONFIG,
    CommandError,
    add_config_option,
    config_path,
    load_config_or_fail,
)

__all__ = [
    "DEFAULT_CONFIG",
    "CommandError",
    "add_config_option",
    "config_path",
    "load_config_or_fail",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
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
