"""`python -m scan` end to end: our server on loopback, sslyze on both FTPS ports, the SPEC rules.

The scan runs once (as `make scan` runs it, in a subprocess, creating .venv-sslyze when it
is missing) and every test reads the files it wrote. The rule tests feed the real sslyze
JSON, weakened, back to the rules, so a rule that reads the wrong key cannot pass.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from scan import rules
from scan.venv import REPO

SCAN_TIMEOUT = 600  # a first run also creates .venv-sslyze (pip install sslyze)


@dataclass(frozen=True)
class ScanRun:
    exit_code: int
    output: str
    summary: dict[str, Any]
    raw: dict[str, dict[str, Any]]  # "explicit" / "implicit" -> sslyze's JSON document


_run: ScanRun | None = None
_failure: str | None = None  # a failed scan is not repeated for every test


def scan_once(case: SynchronousTestCase) -> ScanRun:
    """Run `python -m scan` the first time a test asks; later tests get the same run."""
    global _run, _failure
    if _failure is not None:
        raise AssertionError(_failure)
    if _run is None:
        try:
            _run = _scan(case)
        except AssertionError as error:
            _failure = str(error)
            raise
    return _run


def _scan(case: SynchronousTestCase) -> ScanRun:
    """`python -m scan --results TEMP`; its exit code, output and the files it wrote."""
    results = Path(case.mktemp()).absolute()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "scan", "--results", str(results)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=SCAN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"python -m scan took more than {SCAN_TIMEOUT} s") from None
    output = done.stdout + done.stderr
    summaries = sorted(results.glob("scan-*.json"))
    if len(summaries) != 1:
        raise AssertionError(f"no scan summary in {results} (exit {done.returncode}):\n{output}")
    summary = json.loads(summaries[0].read_text())
    raw = {name: json.loads(Path(path).read_text()) for name, path in summary["raw"].items()}
    return ScanRun(done.returncode, output, summary, raw)


class ScanTests(SynchronousTestCase):
    def test_rules_hold_on_both_ports(self) -> None:
        """No finding, exit 0 and PASS printed: the server's TLS settings meet the SPEC."""
        run = scan_once(self)
        self.assertEqual(run.summary["findings"], [], run.output)
        self.assertTrue(run.summary["passed"])
        self.assertEqual(run.exit_code, 0, run.output)
        self.assertIn("PASS: no finding on any port", run.output)

    def test_both_ports_were_scanned(self) -> None:
        """sslyze reached two different ports, the explicit one through STARTTLS FTP."""
        run = scan_once(self)
        self.assertEqual(sorted(run.raw), ["explicit", "implicit"])
        ports = set()
        for name, document in run.raw.items():
            (server,) = document["server_scan_results"]
            location = server["server_location"]
            self.assertEqual(location["ip_address"], "127.0.0.1")
            ports.add(location["port"])
            self.assertEqual(server["connectivity_status"], "COMPLETED")
            self.assertEqual(server["scan_status"], "COMPLETED")
            starttls = server["network_configuration"]["tls_opportunistic_encryption"]
            self.assertEqual(starttls, "FTP" if name == "explicit" else None)
            for key in rules.PLUGINS:
                self.assertEqual(server["scan_result"][key]["status"], "COMPLETED", (name, key))
        self.assertEqual(len(ports), 2)
        self.assertEqual(ports, {target["port"] for target in run.summary["targets"]})

    def test_tls12_and_tls13_accepted_and_older_refused(self) -> None:
        """Both ports speak TLS 1.2 and 1.3 (not vacuous) and nothing older."""
        run = scan_once(self)
        for name, document in run.raw.items():
            result = document["server_scan_results"][0]["scan_result"]
            for key in ("tls_1_2_cipher_suites", "tls_1_3_cipher_suites"):
                accepted = result[key]["result"]["accepted_cipher_suites"]
                self.assertTrue(accepted, (name, key))
            for key in (
                "ssl_2_0_cipher_suites",
                "ssl_3_0_cipher_suites",
                "tls_1_0_cipher_suites",
                "tls_1_1_cipher_suites",
            ):
                self.assertFalse(result[key]["result"]["is_tls_version_supported"], (name, key))
                self.assertTrue(result[key]["result"]["rejected_cipher_suites"], (name, key))
            for suite in result["tls_1_2_cipher_suites"]["result"]["accepted_cipher_suites"]:
                suite_name = suite["cipher_suite"]["name"]
                self.assertTrue(rules.is_aead(suite_name), suite_name)
                self.assertTrue(rules.has_forward_secrecy(suite_name), suite_name)
                self.assertIsNotNone(suite["ephemeral_key"], suite_name)

    def test_reported_facts(self) -> None:
        """Groups, resumption and the certificate are in the summary (reported, not judged)."""
        run = scan_once(self)
        for target in run.summary["targets"]:
            self.assertIn("X25519", target["curves"])
            self.assertEqual(sorted(target["resumption"]), ["TLS tickets", "session IDs"])
            certificate = target["certificate"]
            self.assertEqual(certificate["subject"], "CN=localhost")
            self.assertIn("127.0.0.1", certificate["names"])
            self.assertIn("Supplied CA file", certificate["trusted_by"])
        self.assertIn("certificate:", run.output)
        self.assertIn("TLS 1.2 accepted suites:", run.output)

    # --- the rules, fed the real document with one thing weakened at a time

    def weakened(self, change: Any) -> list[str]:
        document = copy.deepcopy(scan_once(self).raw["explicit"])
        change(document["server_scan_results"][0]["scan_result"])
        return rules.findings(rules.summarize("explicit", document))

    def assertFinding(self, found: list[str], text: str) -> None:
        self.assertEqual(len(found), 1, found)
        self.assertIn(text, found[0])

    def test_unchanged_document_has_no_finding(self) -> None:
        self.assertEqual(self.weakened(lambda result: None), [])

    def test_old_protocol_accepted_is_a_finding(self) -> None:
        def accept_tls10(result: dict[str, Any]) -> None:
            suites = result["tls_1_0_cipher_suites"]["result"]
            suites["accepted_cipher_suites"] = [
                {
                    "cipher_suite": suites["rejected_cipher_suites"][0]["cipher_suite"],
                    "ephemeral_key": None,
                }
            ]
            suites["is_tls_version_supported"] = True

        self.assertFinding(self.weakened(accept_tls10), "TLS 1.0 accepted")

    def test_weak_tls12_suites_are_findings(self) -> None:
        def add(name: str) -> Any:
            def change(result: dict[str, Any]) -> None:
                accepted = result["tls_1_2_cipher_suites"]["result"]["accepted_cipher_suites"]
                accepted.append(
                    {"cipher_suite": {"name": name, "is_anonymous": False}, "ephemeral_key": None}
                )

            return change

        self.assertFinding(self.weakened(add("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")), "not AEAD")
        self.assertFinding(
            self.weakened(add("TLS_RSA_WITH_AES_128_GCM_SHA256")), "no forward secrecy"
        )

    def test_missing_tls13_is_a_finding(self) -> None:
        def drop(result: dict[str, Any]) -> None:
            result["tls_1_3_cipher_suites"]["result"]["accepted_cipher_suites"] = []

        self.assertFinding(self.weakened(drop), "TLS 1.3 not accepted")

    def test_compression_and_renegotiation_are_findings(self) -> None:
        def compress(result: dict[str, Any]) -> None:
            result["tls_compression"]["result"]["supports_compression"] = True

        def renegotiate(result: dict[str, Any]) -> None:
            reneg = result["session_renegotiation"]["result"]
            reneg["is_vulnerable_to_client_renegotiation_dos"] = True
            reneg["client_renegotiations_success_count"] = 3

        self.assertFinding(self.weakened(compress), "compression accepted")
        self.assertFinding(self.weakened(renegotiate), "client-initiated renegotiation")

    def test_failed_plugin_is_a_finding(self) -> None:
        """sslyze's exit code is not read: an ERROR status in the JSON must not pass."""

        def fail(result: dict[str, Any]) -> None:
            result["tls_1_1_cipher_suites"] = {
                "status": "ERROR",
                "error_reason": "BUG_IN_SSLYZE",
                "error_trace": None,
                "result": None,
            }

        self.assertFinding(self.weakened(fail), "tls_1_1_cipher_suites failed")

    def test_no_server_result_is_a_schema_error(self) -> None:
        document = {"server_scan_results": [], "invalid_server_strings": ["x: not a host"]}
        with self.assertRaises(rules.SchemaError):
            rules.summarize("explicit", document)


class SSHAuditTests(SynchronousTestCase):
    """ssh-audit on the SFTP port (SPEC section 9): no failure item; the rule reads the
    real JSON, weakened, so it cannot pass by reading the wrong key."""

    def test_no_failure_and_strict_kex_offered(self) -> None:
        run = scan_once(self)
        ssh = run.summary["ssh"]
        self.assertEqual(ssh["failures"], [])
        self.assertIn("kex-strict-s-v00@openssh.com", ssh["algorithms"]["kex"])
        self.assertIn("chacha20-poly1305@openssh.com", ssh["algorithms"]["enc"])
        for name in ssh["algorithms"]["enc"]:
            self.assertFalse(name.endswith("-cbc") or "3des" in name, name)
        self.assertEqual(ssh["algorithms"]["key"], ["ssh-ed25519"])

    def test_a_fail_note_is_a_finding(self) -> None:
        from scan import ssh_audit

        document = copy.deepcopy(_ssh_raw(scan_once(self)))
        self.assertEqual(ssh_audit.findings(ssh_audit.summarize(1, document)), [])
        document["mac"].append(
            {"algorithm": "hmac-sha1", "notes": {"fail": ["using broken SHA-1 hash algorithm"]}}
        )
        found = ssh_audit.findings(ssh_audit.summarize(1, document))
        self.assertEqual(found, ["ssh mac hmac-sha1: using broken SHA-1 hash algorithm"])
        document = copy.deepcopy(_ssh_raw(scan_once(self)))
        document["cves"] = [{"name": "CVE-2023-48795", "description": "Terrapin"}]
        self.assertEqual(len(ssh_audit.findings(ssh_audit.summarize(1, document))), 1)


def _ssh_raw(run: ScanRun) -> dict[str, Any]:
    """ssh-audit's JSON document as the scan wrote it."""
    return dict(json.loads(Path(run.summary["ssh"]["raw"]).read_text()))
