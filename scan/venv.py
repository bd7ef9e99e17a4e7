"""The separate venvs scanning tools run from (sslyze pins an older cryptography than
pyOpenSSL needs; ssh-audit is kept apart the same way)."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
VENV: Final = REPO / ".venv-sslyze"
REQUIREMENT: Final = "sslyze~=6.3"
"""The JSON this package reads is sslyze 6's; a new major version needs a look first."""

INSTALL_TIMEOUT: Final = 900.0


class SetupError(Exception):
    """A tool's venv could not be made; the message is one line."""


def ensure_tool(venv: Path, requirement: str, executable: str, python: str) -> Path:
    """Create `venv` with `requirement` installed unless done before; return its
    `executable` from `venv/bin`.

    Safe to call from several processes at once (a lock file inside the venv folder).
    A marker written after pip succeeds tells a finished venv from a broken-off one.
    """
    program = venv / "bin" / executable
    venv.mkdir(parents=True, exist_ok=True)
    marker = venv / ".installed"
    with open(venv / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and program.exists():
            return program
        _run([python, "-m", "venv", str(venv)], f"create the {executable} venv")
        _run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", requirement],
            f"pip install {requirement}",
        )
        if not program.exists():
            raise SetupError(f"pip installed {requirement} but {program} is missing")
        marker.write_text(requirement + "\n")
    return program


def ensure_sslyze(venv: Path = VENV, python: str = sys.executable) -> Path:
    """The sslyze executable, from its own venv (made on first use)."""
    return ensure_tool(venv, REQUIREMENT, "sslyze", python)


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what}: no result within {INSTALL_TIMEOUT:.0f} s") from None
    except OSError as error:
        raise SetupError(f"{what}: {error}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith("WARNING: Location")] or lines
        raise SetupError(f"{what}: exit {done.returncode}: {lines[-1] if lines else 'no message'}")
