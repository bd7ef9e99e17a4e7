"""ssh-audit against the SFTP listener, from its own venv (as sslyze has its own).

The rule (SPEC section 9): ssh-audit reports no failure item: no algorithm with a
`fail` note, no CVE. Warnings are listed in the report but are not findings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from scan.venv import REPO, ensure_tool

VENV: Final = REPO / ".venv-ssh-audit"
REQUIREMENT: Final = "ssh-audit~=3.9"
"""The JSON read here is ssh-audit 3's; a new major version needs a look first."""
AUDIT_TIMEOUT: Final = 120.0
SECTIONS: Final = ("kex", "key", "enc", "mac")


class AuditError(Exception):
    """ssh-audit gave no usable result; the message is one line."""


def ensure_ssh_audit(venv: Path = VENV, python: str = sys.executable) -> Path:
    """The ssh-audit executable, from its own venv (made on first use)."""
    return ensure_tool(venv, REQUIREMENT, "ssh-audit", python)


@dataclass
class AuditSummary:
    """What ssh-audit said about one SSH port."""

    port: int
    raw: str = ""  # where ssh-audit's JSON was written
    algorithms: dict[str, list[str]] = field(default_factory=dict)  # section -> names
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_ssh_audit(
    executable: Path, address: str, port: int, timeout: float = AUDIT_TIMEOUT
) -> dict[str, Any]:
    """ssh-audit's JSON for `address:port` (its exit code tells warnings apart: ignored)."""
    argv = [str(executable), "-j", "--skip-rate-test", "-p", str(port), address]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AuditError(f"ssh-audit: no result within {timeout:g} s") from None
    except OSError as error:
        raise AuditError(f"cannot run {executable}: {error}") from None
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise AuditError(
            f"ssh-audit: exit {done.returncode}, no JSON: {why[-1] if why else 'no output'}"
        ) from None
    if not isinstance(document, dict) or not all(s in document for s in SECTIONS):
        raise AuditError("ssh-audit: the JSON lacks the kex/key/enc/mac sections")
    return document


def summarize(port: int, document: dict[str, Any], raw: Path | None = None) -> AuditSummary:
    summary = AuditSummary(port, str(raw or ""))
    for section in SECTIONS:
        for item in document.get(section) or []:
            name = str(item.get("algorithm"))
            summary.algorithms.setdefault(section, []).append(name)
            notes = item.get("notes") or {}
            summary.failures += [f"ssh {section} {name}: {text}" for text in notes.get("fail", [])]
            summary.warnings += [f"ssh {section} {name}: {text}" for text in notes.get("warn", [])]
    for cve in document.get("cves") or []:
        summary.failures.append(f"ssh: {cve.get('name', 'CVE')}: {cve.get('description', '')}")
    return summary


def findings(summary: AuditSummary) -> list[str]:
    """Every failure item is a finding."""
    return list(summary.failures)
