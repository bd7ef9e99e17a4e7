"""Entry point: `python -m bench [--quick | --full] [...]`."""

from bench.cli import main

raise SystemExit(main())
