"""What an sslyze 6 JSON result says about one server port, and which SPEC TLS rules it breaks.

Pure functions on plain data: `summarize` reads one sslyze JSON document (one server
location) into a `TargetSummary`; `findings` lists the rules it breaks, one line each.
The rules (SPEC section 2 `[tls]`, section 5; docs/ftps.md "TLS versions and ciphers"):

- SSL 2.0, SSL 3.0, TLS 1.0 and TLS 1.1: no cipher suite accepted;
- TLS 1.2: accepted (the scan's config keeps `min_version = "TLSv1.2"`), and every
  accepted suite is AEAD (GCM, ChaCha20-Poly1305, CCM) with forward secrecy (ECDHE, DHE);
- TLS 1.3: accepted, AEAD suites only;
- no TLS compression;
- client-initiated renegotiation not accepted (secure renegotiation support is fine);
- every one of these plugins completed: a rule that could not be checked is a finding.

Elliptic-curve groups, session resumption and the certificate are reported, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

# sslyze JSON key -> CLI flag. The rules need all of these; certificate_info is reported.
PLUGINS: Final = {
    "ssl_2_0_cipher_suites": "--sslv2",
    "ssl_3_0_cipher_suites": "--sslv3",
    "tls_1_0_cipher_suites": "--tlsv1",
    "tls_1_1_cipher_suites": "--tlsv1_1",
    "tls_1_2_cipher_suites": "--tlsv1_2",
    "tls_1_3_cipher_suites": "--tlsv1_3",
    "tls_compression": "--compression",
    "session_renegotiation": "--reneg",
    "elliptic_curves": "--elliptic_curves",
    "session_resumption": "--resum",
    "certificate_info": "--certinfo",
}

PROTOCOLS: Final = {
    "SSL 2.0": "ssl_2_0_cipher_suites",
    "SSL 3.0": "ssl_3_0_cipher_suites",
    "TLS 1.0": "tls_1_0_cipher_suites",
    "TLS 1.1": "tls_1_1_cipher_suites",
    "TLS 1.2": "tls_1_2_cipher_suites",
    "TLS 1.3": "tls_1_3_cipher_suites",
}
REFUSED_PROTOCOLS: Final = ("SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1")

_AEAD_MARKS: Final = ("_GCM_", "_CHACHA20_POLY1305_", "_CCM")
_FORWARD_SECRET_PREFIXES: Final = ("TLS_ECDHE_", "TLS_DHE_")


class SchemaError(Exception):
    """The document is not the sslyze 6 JSON this module reads; one line."""


@dataclass(frozen=True)
class Suite:
    name: str
    key_exchange: str | None  # e.g. "ECDH X25519 253 bits"; None when sslyze saw none
    anonymous: bool = False


@dataclass(frozen=True)
class Certificate:
    subject: str
    issuer: str
    names: tuple[str, ...]  # subjectAltName DNS names and IP addresses
    not_before: str
    not_after: str
    public_key: str  # e.g. "ECPublicKey 256 secp256r1"
    signature: str  # e.g. "ecdsa-with-SHA256"
    fingerprint_sha256: str  # base64, as sslyze writes it
    chain_order_valid: bool | None
    trusted_by: tuple[str, ...]  # trust stores (incl. "Supplied CA file") that validated it


@dataclass
class TargetSummary:
    """The facts one sslyze run found on one server port."""

    name: str  # "explicit" | "implicit"
    host: str
    port: int
    starttls: str | None  # "FTP" for explicit FTPS
    connectivity: str  # "COMPLETED" or the error
    plugin_errors: dict[str, str] = field(default_factory=dict)  # key -> reason
    accepted: dict[str, list[Suite]] = field(default_factory=dict)  # "TLS 1.2" -> suites
    compression: bool | None = None
    client_renegotiation_accepted: bool | None = None
    client_renegotiations: int | None = None
    secure_renegotiation: bool | None = None
    curves: list[str] = field(default_factory=list)
    resumption: dict[str, str] = field(default_factory=dict)  # "session IDs" -> "0/5 ..."
    certificate: Certificate | None = None
    sslyze_version: str = ""


def _get(document: Any, *path: str | int) -> Any:
    node = document
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            where = ".".join(str(part) for part in path)
            raise SchemaError(f"sslyze JSON has no {where}") from None
    return node


def is_aead(suite_name: str) -> bool:
    """GCM, ChaCha20-Poly1305 or CCM, by the IANA suite name."""
    return any(mark in suite_name for mark in _AEAD_MARKS)


def has_forward_secrecy(suite_name: str) -> bool:
    """An ephemeral (EC)DH key exchange, by the IANA TLS 1.2 suite name."""
    return suite_name.startswith(_FORWARD_SECRET_PREFIXES)


def _key_exchange(accepted: dict[str, Any]) -> str | None:
    key = accepted.get("ephemeral_key")
    if not key:
        return None
    group = key.get("curve_name") or key.get("type_name") or "?"
    return f"{key.get('type_name', '?')} {group} {key.get('size', '?')} bits"


def _suites(result: dict[str, Any]) -> list[Suite]:
    return [
        Suite(
            name=str(_get(item, "cipher_suite", "name")),
            key_exchange=_key_exchange(item),
            anonymous=bool(item.get("cipher_suite", {}).get("is_anonymous", False)),
        )
        for item in _get(result, "accepted_cipher_suites")
    ]


def _certificate(result: dict[str, Any]) -> Certificate | None:
    deployments = _get(result, "certificate_deployments")
    if not deployments:
        return None
    deployment = deployments[0]
    chain = _get(deployment, "received_certificate_chain")
    if not chain:
        return None
    leaf = chain[0]
    san = leaf.get("subject_alternative_name") or {}
    key = leaf.get("public_key") or {}
    key_text = " ".join(
        str(part)
        for part in (key.get("algorithm"), key.get("key_size"), key.get("ec_curve_name"))
        if part
    )
    trusted = tuple(
        str(_get(check, "trust_store", "name"))
        for check in deployment.get("path_validation_results", [])
        if check.get("was_validation_successful")
    )
    return Certificate(
        subject=str(_get(leaf, "subject", "rfc4514_string")),
        issuer=str(_get(leaf, "issuer", "rfc4514_string")),
        names=tuple(san.get("dns_names", [])) + tuple(san.get("ip_addresses", [])),
        not_before=str(leaf.get("not_valid_before", "")),
        not_after=str(leaf.get("not_valid_after", "")),
        public_key=key_text,
        signature=str((leaf.get("signature_algorithm_oid") or {}).get("name", "")),
        fingerprint_sha256=str(leaf.get("fingerprint_sha256", "")),
        chain_order_valid=deployment.get("received_chain_has_valid_order"),
        trusted_by=trusted,
    )


def summarize(name: str, document: dict[str, Any]) -> TargetSummary:
    """The facts of the first (only) server location of an sslyze JSON document."""
    results = _get(document, "server_scan_results")
    if not results:
        invalid = document.get("invalid_server_strings") or []
        why = f": {invalid[0]}" if invalid else ""
        raise SchemaError(f"sslyze JSON has no server result{why}")
    server = results[0]
    summary = TargetSummary(
        name=name,
        host=str(_get(server, "server_location", "ip_address")),
        port=int(_get(server, "server_location", "port")),
        starttls=_get(server, "network_configuration").get("tls_opportunistic_encryption"),
        connectivity=str(_get(server, "connectivity_status")),
        sslyze_version=str(document.get("sslyze_version", "")),
    )
    if summary.connectivity != "COMPLETED":
        trace = server.get("connectivity_error_trace") or {}
        message = trace.get("exc_str") if isinstance(trace, dict) else None
        summary.connectivity += f" ({message or str(trace)[:200]})"
        return summary
    scan = _get(server, "scan_result")
    attempts: dict[str, Any] = {}
    for key in PLUGINS:
        attempt = _get(scan, key)
        status = _get(attempt, "status")
        if status != "COMPLETED":
            reason = attempt.get("error_reason") or status
            summary.plugin_errors[key] = str(reason)
        else:
            attempts[key] = _get(attempt, "result")
    for label, key in PROTOCOLS.items():
        if key in attempts:
            summary.accepted[label] = _suites(attempts[key])
    if "tls_compression" in attempts:
        summary.compression = bool(_get(attempts["tls_compression"], "supports_compression"))
    if "session_renegotiation" in attempts:
        reneg = attempts["session_renegotiation"]
        summary.client_renegotiation_accepted = bool(
            _get(reneg, "is_vulnerable_to_client_renegotiation_dos")
        )
        summary.client_renegotiations = int(reneg.get("client_renegotiations_success_count", 0))
        summary.secure_renegotiation = bool(_get(reneg, "supports_secure_renegotiation"))
    if "elliptic_curves" in attempts:
        curves = attempts["elliptic_curves"].get("supported_curves") or []
        summary.curves = [str(_get(curve, "name")) for curve in curves]
    if "session_resumption" in attempts:
        resum = attempts["session_resumption"]
        for label, prefix in (("session IDs", "session_id"), ("TLS tickets", "tls_ticket")):
            summary.resumption[label] = (
                f"{resum.get(prefix + '_resumption_result', '?')}"
                f" ({resum.get(prefix + '_successful_resumptions_count', '?')}"
                f"/{resum.get(prefix + '_attempted_resumptions_count', '?')} resumed)"
            )
    if "certificate_info" in attempts:
        summary.certificate = _certificate(attempts["certificate_info"])
    return summary


def findings(summary: TargetSummary) -> list[str]:
    """One line per broken rule (or rule that could not be checked); empty when all hold."""
    where = f"{summary.name} port {summary.port}"
    if summary.connectivity != "COMPLETED":
        return [f"{where}: sslyze could not connect: {summary.connectivity}"]
    lines = [
        f"{where}: sslyze plugin {key} failed ({reason}): its rule is unchecked"
        for key, reason in summary.plugin_errors.items()
    ]
    for label in REFUSED_PROTOCOLS:
        suites = summary.accepted.get(label, [])
        if suites:
            names = ", ".join(suite.name for suite in suites)
            lines.append(f"{where}: {label} accepted ({len(suites)} suites: {names})")
    for label in ("TLS 1.2", "TLS 1.3"):
        if label in summary.accepted and not summary.accepted[label]:
            lines.append(f"{where}: {label} not accepted")
    for suite in summary.accepted.get("TLS 1.2", []):
        weak = [
            why
            for why, bad in (
                ("not AEAD", not is_aead(suite.name)),
                ("no forward secrecy", not has_forward_secrecy(suite.name)),
                ("anonymous", suite.anonymous),
            )
            if bad
        ]
        if weak:
            lines.append(f"{where}: TLS 1.2 suite {suite.name} accepted: {', '.join(weak)}")
    for suite in summary.accepted.get("TLS 1.3", []):
        if not is_aead(suite.name):
            lines.append(f"{where}: TLS 1.3 suite {suite.name} accepted: not AEAD")
    if summary.compression:
        lines.append(f"{where}: TLS compression accepted (CRIME)")
    if summary.client_renegotiation_accepted or (summary.client_renegotiations or 0) > 0:
        lines.append(
            f"{where}: client-initiated renegotiation accepted "
            f"({summary.client_renegotiations} renegotiations succeeded)"
        )
    return lines


def render(summaries: list[TargetSummary]) -> str:
    """A readable table, one column per port, then the accepted suites and the certificate."""
    headers = ["check"] + [f"{s.name} :{s.port}" for s in summaries]
    rows: list[list[str]] = []
    for label in PROTOCOLS:
        rows.append(
            [label]
            + [
                (
                    "error"
                    if PROTOCOLS[label] in s.plugin_errors
                    else f"{len(s.accepted[label])} suites"
                    if s.accepted.get(label)
                    else "refused"
                )
                for s in summaries
            ]
        )
    rows.append(["compression"] + [_yes_no(s.compression) for s in summaries])
    rows.append(
        ["client renegotiation"] + [_yes_no(s.client_renegotiation_accepted) for s in summaries]
    )
    rows.append(["secure renegotiation"] + [_yes_no(s.secure_renegotiation) for s in summaries])
    rows.append(["groups (EC)"] + [", ".join(s.curves) or "-" for s in summaries])
    for label in ("session IDs", "TLS tickets"):
        rows.append([f"resumption: {label}"] + [s.resumption.get(label, "-") for s in summaries])
    rows.append(["findings"] + [str(len(findings(s))) for s in summaries])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, ["-" * w for w in widths], *rows]
    ]
    for s in summaries:
        for label in ("TLS 1.2", "TLS 1.3"):
            if s.accepted.get(label):
                out.append(f"\n{s.name} :{s.port} {label} accepted suites:")
                out.extend(
                    f"  {suite.name:<48} {suite.key_exchange or '-'}" for suite in s.accepted[label]
                )
    certificates = {s.certificate for s in summaries if s.certificate is not None}
    for certificate in certificates:
        out.append("\ncertificate:")
        out.append(f"  subject {certificate.subject}; issuer {certificate.issuer}")
        out.append(f"  names {', '.join(certificate.names) or '-'}")
        out.append(f"  valid {certificate.not_before} .. {certificate.not_after}")
        out.append(f"  key {certificate.public_key}; signature {certificate.signature}")
        out.append(f"  sha256 {certificate.fingerprint_sha256}")
        out.append(
            f"  chain order {'valid' if certificate.chain_order_valid else 'INVALID'}; "
            f"trusted by {', '.join(certificate.trusted_by) or 'no trust store'}"
        )
    return "\n".join(out)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")
