"""Issue #9.11: every subcommand that reads the configuration reports a missing or bad one
as one line per problem on stderr, with no summary line, and a non-zero exit (SPEC 2).

The CLI runs as a real process (`python -m securetransport`), as an operator runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

# Every subcommand that opens the configuration, with arguments that parse.
SUBCOMMANDS: tuple[tuple[str, ...], ...] = (
    ("check",),
    ("users", "list"),
    ("users", "show", "alice"),
    ("users", "add", "alice"),
    ("users", "passwd", "alice", "--password-stdin"),
    ("users", "disable", "alice"),
    ("users", "enable", "alice"),
    ("users", "remove", "alice"),
    ("users", "certificate", "add", "alice", "alice.crt"),
    ("users", "certificate", "remove", "alice", "00" * 32),
    ("policy", "explain", "alice"),
)


class ConfigErrorLinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp()).absolute()
        self.folder.mkdir(parents=True)

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        result = subprocess.run(
            [sys.executable, "-m", "securetransport", *argv],
            cwd=self.folder,
            input="secret\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.returncode, result.stdout, result.stderr

    def test_missing_config_is_one_line(self) -> None:
        missing = self.folder / "missing.toml"
        for argv in SUBCOMMANDS:
            code, out, err = self.run_cli(*argv, "--config", str(missing))
            self.assertNotEqual(code, 0, argv)
            self.assertEqual(out, "", argv)
            lines = err.splitlines()
            self.assertEqual(len(lines), 1, (argv, err))
            self.assertIn(f"{missing}: cannot read: No such file or directory", lines[0], argv)

    def test_one_line_per_problem_and_no_summary(self) -> None:
        bad = self.folder / "bad.toml"
        bad.write_text(
            '[server]\nbannr = 1\numask = "9"\n'
            '[[class]]\nname = "all"\nssl = "optional"\nlogin = ["password"]\n'
        )
        for argv in SUBCOMMANDS:
            code, out, err = self.run_cli(*argv, "--config", str(bad))
            self.assertNotEqual(code, 0, argv)
            self.assertEqual(out, "", argv)
            # `check` may add `warning: ...` lines (SPEC 2); they are not problems.
            lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
            self.assertEqual(len(lines), 2, (argv, err))
            self.assertIn("server.bannr: ", lines[0], argv)
            self.assertIn("server.umask: ", lines[1], argv)
            self.assertNotIn("more", err, argv)
            self.assertNotIn("has problems", err, argv)
