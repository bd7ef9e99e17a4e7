"""`python -m hardening fuzz [--quick]` and `python -m hardening soak [--minutes N]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardening",
        description="Long hardening runs against a live server on loopback.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fuzz = commands.add_parser("fuzz", help="generated command lines and malformed TLS records")
    fuzz.add_argument("--quick", action="store_true", help="5,000 lines and 100 TLS records")
    fuzz.add_argument("--lines", type=int, default=100_000)
    fuzz.add_argument("--tls-records", type=int, default=1_000)
    fuzz.add_argument("--workers", type=int, default=8, help="concurrent command connections")
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.add_argument("--max-seconds", type=float, default=1500.0)
    fuzz.add_argument("--json", type=Path, help="also write the figures to this file")
    fuzz.add_argument("--keep", action="store_true", help="keep the server folder")
    soak = commands.add_parser("soak", help="many concurrent clients; nothing may be lost")
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--clients", type=int, default=200)
    soak.add_argument("--seed", type=int, default=0)
    soak.add_argument("--json", type=Path, help="also write the figures to this file")
    soak.add_argument("--keep", action="store_true", help="keep the server folder")
    args = parser.parse_args(argv)
    if args.command == "fuzz":
        from hardening.fuzz import FuzzOptions
        from hardening.fuzz import run as run_fuzz

        if min(args.lines, args.tls_records, args.workers) < 0 or args.workers == 0:
            parser.error("--lines, --tls-records must be >= 0 and --workers >= 1")
        options = FuzzOptions(
            lines=5_000 if args.quick else args.lines,
            tls_records=100 if args.quick else args.tls_records,
            workers=args.workers,
            seed=args.seed,
            max_seconds=args.max_seconds,
            keep=args.keep,
            json_path=args.json,
        )
        return run_fuzz(options)
    from hardening.soak import SoakOptions
    from hardening.soak import run as run_soak

    if args.minutes <= 0 or args.clients < 1:
        parser.error("--minutes must be > 0 and --clients >= 1")
    return run_soak(
        SoakOptions(
            minutes=args.minutes,
            clients=args.clients,
            seed=args.seed,
            keep=args.keep,
            json_path=args.json,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
