"""`securetransport check` (stub, to be written)."""

from __future__ import annotations

import argparse

from securetransport.cli import add_config_option


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("check", help="check (not yet written)")
    add_config_option(parser)
    parser.set_defaults(func=lambda args: 1)
