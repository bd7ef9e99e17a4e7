"""Entry point: `python -m scan [--results DIR] [--timeout SECONDS]`."""

from scan.cli import main

raise SystemExit(main())
