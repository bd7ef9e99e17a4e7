"""`python -m scan`: start our server on loopback, scan both FTPS ports with sslyze, judge."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scan import rules, ssh_audit
from scan.runner import SSLYZE_TIMEOUT, RunError, Target, run_all
from scan.server import ServerError, ServerProcess, make_pki, write_config
from scan.venv import REPO, SetupError, ensure_sslyze

RESULTS = REPO / "scan" / "results"
SERVER_BIN = Path(sys.prefix) / "bin"  # the venv running us holds twistd and securetransport
_UNHANDLED = re.compile(r"Unhandled Error|Traceback \(most recent call last\)|#critical\]")


@dataclass
class Report:
    """One scan: what sslyze found per port, the broken rules and where things were written."""

    summaries: list[rules.TargetSummary]
    findings: list[str]
    seconds: dict[str, float]
    summary_path: Path
    raw_paths: dict[str, Path]
    server_log: Path
    server_warnings: list[str] = field(default_factory=list)
    ssh: ssh_audit.AuditSummary | None = None

    @property
    def passed(self) -> bool:
        return not self.findings


def run_scan(results: Path = RESULTS, timeout: float = SSLYZE_TIMEOUT) -> Report:
    """Make the sslyze venv if needed, serve a throw-away config, scan, write the results.

    Raises SetupError, ServerError or RunError (one line each) when no verdict is possible.
    """
    seconds: dict[str, float] = {}
    started = time.monotonic()
    sslyze = ensure_sslyze()
    seconds["sslyze venv"] = time.monotonic() - started
    mark = time.monotonic()
    ssh_audit_exe = ssh_audit.ensure_ssh_audit()
    seconds["ssh-audit venv"] = time.monotonic() - mark
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="securetransport-scan-") as temp:
        root = Path(temp)
        mark = time.monotonic()
        config = write_config(root)
        pki = make_pki(root, SERVER_BIN)
        server = ServerProcess(config, root / "server.log", SERVER_BIN)
        try:
            ports = server.start()
            seconds["server start"] = time.monotonic() - mark
            targets = [
                Target("explicit", "127.0.0.1", ports.explicit, "ftp"),
                Target("implicit", "127.0.0.1", ports.implicit, None),
            ]
            mark = time.monotonic()
            outcomes = run_all(sslyze, targets, root, ca_file=pki / "ca.crt", timeout=timeout)
            seconds["sslyze"] = time.monotonic() - mark
            for outcome in outcomes:
                seconds[f"sslyze {outcome.target.name}"] = outcome.seconds
            mark = time.monotonic()
            audit_document = ssh_audit.run_ssh_audit(ssh_audit_exe, "127.0.0.1", ports.sftp)
            seconds["ssh-audit"] = time.monotonic() - mark
            server_alive = server.process is not None and server.process.poll() is None
        finally:
            server.stop()
        log_text = server.log_text()
        server_log = results / f"server-{stamp}.log"
        server_log.write_text(log_text)
        raw_paths: dict[str, Path] = {}
        for outcome in outcomes:
            raw_paths[outcome.target.name] = results / f"sslyze-{outcome.target.name}-{stamp}.json"
            shutil.copyfile(outcome.json_path, raw_paths[outcome.target.name])
        ssh_raw = results / f"ssh-audit-{stamp}.json"
        ssh_raw.write_text(json.dumps(audit_document, indent=2) + "\n")

    summaries: list[rules.TargetSummary] = []
    findings: list[str] = []
    for outcome in outcomes:
        try:
            summary = rules.summarize(outcome.target.name, outcome.document)
        except rules.SchemaError as error:
            raise RunError(f"{outcome.target.name} port: {error}") from None
        if summary.port != outcome.target.port:
            findings.append(
                f"{outcome.target.name}: sslyze scanned port {summary.port}, "
                f"not {outcome.target.port}"
            )
        summaries.append(summary)
        findings.extend(rules.findings(summary))
    ssh_summary = ssh_audit.summarize(ports.sftp, audit_document, ssh_raw)
    findings.extend(ssh_audit.findings(ssh_summary))
    if not server_alive:
        findings.append(f"the server exited during the scan (log: {server_log})")
    unhandled = [line for line in log_text.splitlines() if _UNHANDLED.search(line)]
    if unhandled:
        findings.append(
            f"the server logged {len(unhandled)} unhandled errors during the scan "
            f"(first: {unhandled[0][:160]}; log: {server_log})"
        )
    kinds = Counter(_generic(line) for line in log_text.splitlines() if "#warn]" in line)
    warnings = [f"{count} x {text}" for text, count in sorted(kinds.items())]
    seconds["total"] = time.monotonic() - started
    summary_path = results / f"scan-{stamp}.json"
    report = Report(
        summaries, findings, seconds, summary_path, raw_paths, server_log, warnings, ssh_summary
    )
    summary_path.write_text(json.dumps(_as_json(report), indent=2) + "\n")
    return report


def _generic(line: str) -> str:
    """A server log warning without its timestamp and port number, to count kinds of lines."""
    return re.sub(r"\bport \d+", "port N", line.split("] ", 1)[-1])


def _as_json(report: Report) -> dict[str, Any]:
    return {
        "passed": report.passed,
        "findings": report.findings,
        "sslyze_version": next((s.sslyze_version for s in report.summaries), ""),
        "targets": [asdict(summary) for summary in report.summaries],
        "seconds": {key: round(value, 2) for key, value in report.seconds.items()},
        "server_warnings": report.server_warnings,
        "ssh": asdict(report.ssh) if report.ssh is not None else None,
        "raw": {name: str(path) for name, path in report.raw_paths.items()},
        "server_log": str(report.server_log),
    }


def render(report: Report) -> str:
    """The table, the timings and the verdict, for a terminal."""
    lines = [rules.render(report.summaries), ""]
    if report.ssh is not None:
        lines.append(f"sftp port {report.ssh.port} (ssh-audit):")
        for section, names in report.ssh.algorithms.items():
            lines.append(f"  {section}: {', '.join(names)}")
        lines.extend(f"  warning: {text}" for text in report.ssh.warnings)
        lines.append("")
    if report.server_warnings:
        lines.append("server log warnings during the scan (kinds):")
        lines.extend(f"  {warning}" for warning in report.server_warnings)
        lines.append("")
    lines.append(
        "time: " + ", ".join(f"{key} {value:.1f} s" for key, value in report.seconds.items())
    )
    lines.append(f"summary: {report.summary_path}")
    if report.passed:
        lines.append("PASS: no finding on any port")
    else:
        lines.append(f"FAIL: {len(report.findings)} findings")
        lines.extend(f"finding: {finding}" for finding in report.findings)
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scan",
        description="Scan our server's explicit (STARTTLS) and implicit FTPS ports with sslyze "
        "on loopback and fail on anything weaker than the SPEC's TLS settings.",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=SSLYZE_TIMEOUT,
        help=f"seconds allowed for sslyze (default {SSLYZE_TIMEOUT:.0f})",
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """0: every rule holds on both ports; 1: findings; 2: no verdict (setup failed)."""
    args = parse(argv)
    try:
        report = run_scan(args.results, args.timeout)
    except (SetupError, ServerError, RunError, ssh_audit.AuditError, OSError) as error:
        print(f"scan: error: {error}", file=sys.stderr)
        return 2
    print(render(report))
    return 0 if report.passed else 1
