"""Certificates made per test, and FTPS clients that show every reply (tests/e2e/test_access.py).

`CertFactory` issues client certificates from the live server's own CA (pki/ca.crt) or from
others: expired, not yet valid, serverAuth only, self-signed (to pin), long chains, odd
subjects, and CRLs. `dialogue` runs ftplib (FTP_TLS, optionally with a client
certificate and a source address) through a list of command lines and returns every
reply instead of raising; `curl_dialogue` and `lftp_dialogue` run the real clients with
their protocol traces on.
"""

from __future__ import annotations

import contextlib
import datetime
import ftplib
import hashlib
import io
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer

from hardening.clients import ResumingFTP_TLS
from securetransport import pki
from securetransport.cli import main as cli_main
from tests.e2e.harness import LiveServer, curl_base, curl_url, lftp_script, run_tool

DAY = datetime.timedelta(days=1)
CLIENT_TIMEOUT = 20
FTP_ERRORS = (ftplib.error_reply, ftplib.error_temp, ftplib.error_perm, ftplib.error_proto)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class ClientCert:
    """A client certificate on disk: `cert` is the PEM chain (leaf first), `key` its key."""

    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the leaf, 64 lowercase hex digits
    serial: int = 0


@dataclass
class CertFactory:
    """Client certificates for one live server, written under `folder`."""

    server: LiveServer
    folder: Path
    ca: x509.Certificate = field(init=False)
    ca_key: pki.PrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca = pki.load_certificate(self.server.pki / "ca.crt")
        key = serialization.load_pem_private_key(
            (self.server.pki / "ca.key").read_bytes(), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.ca_key = key

    def existing(self, name: str) -> ClientCert:
        """The certificate `pki init` made for `name` (CN = name, from the server's CA)."""
        cert = pki.load_certificate(self.server.pki / f"{name}.crt")
        return ClientCert(
            self.server.pki / f"{name}.crt",
            self.server.pki / f"{name}.key",
            cert.fingerprint(hashes.SHA256()).hex(),
            cert.serial_number,
        )

    def write(
        self,
        stem: str,
        cert: x509.Certificate,
        key: pki.PrivateKey,
        chain: Sequence[x509.Certificate] = (),
    ) -> ClientCert:
        cert_path = pki.write_pem(self.folder / f"{stem}.crt", [cert, *chain])
        key_path = pki.write_pem(self.folder / f"{stem}.key", key)
        return ClientCert(
            cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex(), cert.serial_number
        )

    def issue(
        self,
        stem: str,
        cn: str,
        *,
        issuer: tuple[x509.Certificate, pki.PrivateKey] | None = None,
        chain: Sequence[x509.Certificate] = (),
        **options: Any,
    ) -> ClientCert:
        """A certificate for `cn` from the server's CA (or `issuer`); `options` go to
        `pki.issue_certificate` (not_before, not_after, eku, serial, san_email, ...)."""
        ca, ca_key = issuer if issuer is not None else (self.ca, self.ca_key)
        cert, key = pki.issue_certificate(ca, ca_key, cn=cn, **options)
        return self.write(stem, cert, key, chain)

    def other_ca(self, stem: str, cn: str) -> ClientCert:
        """A valid clientAuth certificate for `cn` from a CA the server does not trust."""
        return self.issue(stem, cn, issuer=pki.make_ca("some other CA"))

    def expired(self, stem: str, cn: str) -> ClientCert:
        now = utcnow()
        return self.issue(stem, cn, not_before=now - 30 * DAY, not_after=now - DAY)

    def not_yet_valid(self, stem: str, cn: str) -> ClientCert:
        now = utcnow()
        return self.issue(stem, cn, not_before=now + DAY, not_after=now + 30 * DAY)

    def server_auth_only(self, stem: str, cn: str) -> ClientCert:
        return self.issue(stem, cn, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))

    def self_signed(self, stem: str, cn: str) -> ClientCert:
        """A self-signed leaf (CA:false, clientAuth): good only when pinned."""
        key = pki.new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return self.write(stem, cert, key)

    def long_chain(self, stem: str, cn: str, length: int) -> ClientCert:
        """`length` certificates presented: the leaf and `length - 1` intermediates below
        the server's CA (the file holds the leaf, then its issuers in order)."""
        issuers: list[tuple[x509.Certificate, pki.PrivateKey]] = [(self.ca, self.ca_key)]
        for depth in range(length - 1):
            issuers.append(
                pki.issue_certificate(
                    *issuers[-1], cn=f"intermediate {depth + 1}", is_ca=True, eku=None
                )
            )
        cert, key = pki.issue_certificate(*issuers[-1], cn=cn)
        intermediates = [c for c, _ in reversed(issuers[1:])]
        return self.write(stem, cert, key, intermediates)

    def with_subject(self, stem: str, subject: x509.Name) -> ClientCert:
        """A CA-issued clientAuth certificate with any subject (several CNs, odd types)."""
        key = pki.new_key()
        now = utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return self.write(stem, cert, key)

    def raw_common_name(self, stem: str, tag: int, value: bytes) -> ClientCert:
        """A CA-signed certificate whose CN is `value` as the ASN.1 string type `tag`, bytes
        as given (e.g. a PrintableString holding NUL and 0xff, which OpenSSL loads and
        cryptography refuses). Built by patching the to-be-signed bytes and signing again."""
        marker = "Q" * len(value)
        assert 0 < len(value) < 64
        template = self.issue(stem + "-template", marker)
        cert = pki.load_certificate(template.cert)
        old = b"\x0c" + bytes([len(value)]) + marker.encode()
        tbs = cert.tbs_certificate_bytes
        assert tbs.count(old) == 1
        tbs = tbs.replace(old, bytes([tag, len(value)]) + value)
        assert isinstance(self.ca_key, ec.EllipticCurvePrivateKey)
        signature = self.ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        der = cert.public_bytes(serialization.Encoding.DER)
        algorithm = _der_element(der, _der_header(der)[0] + len(cert.tbs_certificate_bytes))
        bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
        body = tbs + algorithm + bit_string
        patched = b"\x30" + _der_length(len(body)) + body
        cert_path = self.folder / f"{stem}.crt"
        cert_path.write_text(ssl.DER_cert_to_PEM_cert(patched))
        return ClientCert(cert_path, template.key, hashlib.sha256(patched).hexdigest())

    def crl(
        self,
        path: Path,
        revoked: Sequence[int],
        *,
        next_update: datetime.datetime | None = None,
        number: int = 1,
    ) -> Path:
        """A CRL of the server's CA listing `revoked` serials."""
        now = utcnow()
        crl = pki.make_crl(
            self.ca,
            self.ca_key,
            revoked,
            last_update=now - 2 * DAY,
            next_update=next_update if next_update is not None else now + 7 * DAY + DAY,
            crl_number=number,
        )
        return pki.write_pem(path, crl)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    data = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(data)]) + data


def _der_header(der: bytes, offset: int = 0) -> tuple[int, int]:
    """(length of the tag+length header, length of the content) of the element at offset."""
    first = der[offset + 1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    return 2 + count, int.from_bytes(der[offset + 2 : offset + 2 + count], "big")


def _der_element(der: bytes, offset: int) -> bytes:
    header, length = _der_header(der, offset)
    return der[offset : offset + header + length]


# ------------------------------------------------------------------------------ ftplib


def client_context(server: LiveServer, cert: ClientCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.pki / "ca.crt"))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


def open_ftp(
    server: LiveServer,
    cert: ClientCert | None = None,
    *,
    source: str | None = None,
) -> tuple[ResumingFTP_TLS, str]:
    """A connected FTP_TLS (not yet AUTH) and its greeting; `source` binds the client's
    address (control and data connections), e.g. 127.0.0.2."""
    ftp = ResumingFTP_TLS(context=client_context(server, cert), timeout=CLIENT_TIMEOUT)
    greeting = ftp.connect(
        "127.0.0.1",
        server.explicit_port,
        timeout=CLIENT_TIMEOUT,
        source_address=(source, 0) if source else None,
    )
    return ftp, greeting


def step(ftp: ResumingFTP_TLS, line: str, listing: list[str] | None = None) -> str:
    """Send one command line the way a client would; return the final reply, never raise.

    `AUTH TLS` wraps the socket (ftplib's auth()); `PROT P`/`PROT C` also set ftplib's
    data protection flag; `LIST`/`NLST` run a transfer (lines go to `listing`).
    """
    try:
        if line == "AUTH TLS":
            return str(ftp.auth())
        if line in ("LIST", "NLST"):
            sink = listing if listing is not None else []
            return str(ftp.retrlines(line, sink.append))
        reply = str(ftp.sendcmd(line))
        if line in ("PROT P", "PROT C") and reply.startswith("200"):
            ftp._prot_p = line == "PROT P"  # type: ignore[attr-defined]
        return reply
    except FTP_ERRORS as error:
        return str(error)
    except (OSError, EOFError) as error:
        return f"closed: {type(error).__name__}: {error}"


def dialogue(
    server: LiveServer,
    lines: Sequence[str],
    cert: ClientCert | None = None,
    *,
    source: str | None = None,
    listing: list[str] | None = None,
) -> list[str]:
    """Connect, send `lines` in order, QUIT; every reply (the greeting left out)."""
    ftp, _ = open_ftp(server, cert, source=source)
    try:
        return [step(ftp, line, listing) for line in lines]
    finally:
        with contextlib.suppress(Exception):
            ftp.quit()
        ftp.close()


def code(reply: str) -> str:
    return reply[:3]


# ------------------------------------------------------------------------------ curl, lftp


@dataclass(frozen=True)
class Trace:
    """What a client process did: exit code, the commands it sent, the replies it got."""

    exit_code: int
    sent: list[str]
    received: list[str]
    pairs: list[tuple[str, str]]  # (command, its final reply), in order
    stdout: bytes
    stderr: str

    def reply_to(self, verb: str) -> str | None:
        """The final reply to the first command with this verb (`USER`, `PASS`), or None."""
        for command, reply in self.pairs:
            if command.split(" ", 1)[0].upper() == verb:
                return reply
        return None

    def sent_verb(self, verb: str) -> bool:
        return any(command.split(" ", 1)[0].upper() == verb for command in self.sent)


def _pair(sent_and_received: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(command, first final reply after it), in order."""
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for direction, text in sent_and_received:
        if direction == ">":
            pending = text
        elif pending is not None and len(text) >= 4 and text[:3].isdigit() and text[3] == " ":
            if not text.startswith("1"):
                pairs.append((pending, text))
                pending = None
    return pairs


def _trace(exit_code: int, stdout: bytes, events: list[tuple[str, str]], stderr: str) -> Trace:
    return Trace(
        exit_code,
        [text for d, text in events if d == ">"],
        [text for d, text in events if d == "<"],
        _pair(events),
        stdout,
        stderr,
    )


def _trace_from_log(
    exit_code: int, out: bytes, err: bytes, *, sent: str, received: str, strip: bool = False
) -> Trace:
    """A Trace from a client's debug log: lines starting with `sent` are what it sent, with
    `received` what it got (each line stripped first if `strip`)."""
    text = err.decode("utf-8", "replace")
    events: list[tuple[str, str]] = []
    for line in text.splitlines():
        if strip:
            line = line.strip()
        if line.startswith(sent):
            events.append((">", line[len(sent) :]))
        elif line.startswith(received):
            events.append(("<", line[len(received) :]))
    return _trace(exit_code, out, events, text)


@defer.inlineCallbacks
def curl_dialogue(
    server: LiveServer,
    user: str,
    password: str,
    cert: ClientCert | None = None,
    *,
    path: str = "/",
    interface: str | None = None,
    ssl_required: bool = True,
    implicit: bool = False,
    extra: Sequence[str] = (),
) -> Any:
    """curl -v listing `path`; fires with a Trace of the FTP dialogue."""
    base = [
        arg for arg in curl_base(server, implicit=implicit) if ssl_required or arg != "--ssl-reqd"
    ]
    args = ["--verbose", *base, "--user", f"{user}:{password}", "--ftp-pasv", *extra]
    if cert is not None:
        args += ["--cert", str(cert.cert), "--key", str(cert.key)]
    if interface is not None:
        args += ["--interface", interface]
    out, err, exit_code = yield run_tool("curl", [*args, curl_url(server, path, implicit=implicit)])
    return _trace_from_log(exit_code, out, err, sent="> ", received="< ")


@defer.inlineCallbacks
def lftp_dialogue(
    server: LiveServer,
    user: str,
    password: str,
    cert: ClientCert | None = None,
    *,
    commands: str = "ls",
    work: Path | None = None,
) -> Any:
    """lftp -d running `commands` over explicit FTPS; fires with a Trace."""
    extra = "set ftp:ssl-force yes; set ftp:ssl-auth TLS"
    if cert is not None:
        extra += f"; set ssl:cert-file {cert.cert}; set ssl:key-file {cert.key}"
    args = ["-d", *lftp_script(server, commands, user=user, password=password, extra=extra)]
    out, err, exit_code = yield run_tool("lftp", args, path=work)
    return _trace_from_log(exit_code, out, err, sent="---> ", received="<--- ", strip=True)


# ------------------------------------------------------------------------------ explain


def explain(
    server: LiveServer,
    name: str,
    *,
    cert: ClientCert | None = None,
    address: str = "127.0.0.1",
    tls: bool = True,
) -> dict[str, Any]:
    """`securetransport policy explain NAME --json` in-process, against the live config."""
    args = ["policy", "explain", name, "--config", str(server.config_path), "--json"]
    args += ["--address", address, "--tls" if tls else "--no-tls"]
    if cert is not None:
        args += ["--certificate", str(cert.cert)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main(args)
    if status != 0:
        raise AssertionError(f"policy explain exited {status}: {err.getvalue()}")
    result: dict[str, Any] = json.loads(out.getvalue())
    return result
